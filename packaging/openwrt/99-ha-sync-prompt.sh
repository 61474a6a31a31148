# /etc/profile.d/99-ha-sync-prompt.sh: the shell prompt says which node this is *now*:
# [P] on the node that holds the virtual IPs (VRRP master), [S] on the other one. The
# incumbent showed the configured initial state, which is wrong after a failover. The state is
# the one keepalived's hooks record (`ha-sync hook`); nothing is shown outside a cluster or
# before keepalived's first event. HA_SYNC_ROOT is for tests.
ha_sync_mark() {
	case "$(cat "${HA_SYNC_ROOT:-}/var/run/ha-sync/vrrp_state" 2>/dev/null)" in
		master) printf '[P]' ;;
		backup | fault | stop) printf '[S]' ;;
	esac
}
if [ -n "$PS1" ] && [ -e "${HA_SYNC_ROOT:-}/etc/config/keepalived" ]; then
	# Single quotes: expanded at every prompt, so it follows a failover.
	PS1='$(ha_sync_mark)'"$PS1"
fi

//! Whether this node may send: the one rule the daemon and `ha-sync now` both obey.
//!
//! Only the primary in VRRP state master sends. A primary that is backup or fault, or whose
//! state is unknown since boot, would push its stale tree over the node that is running:
//! the failback loss that ha-sync exists to prevent.

use crate::status;
use std::path::Path;
use sync_core::node::{Node, Role};

/// Whether this node may send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Gate {
    pub(crate) role: Option<Role>,
    /// The VRRP state, as the hooks recorded it or keepalived's dumps say.
    pub(crate) state: Option<String>,
    pub(crate) active: bool,
    /// Why this node must not send, when it must not.
    pub(crate) reason: Option<String>,
}

pub(crate) fn gate(root: &Path) -> Gate {
    let role = Node::new(root).role();
    let state = status::vrrp_state(root);
    let reason = match (role, state.as_deref()) {
        (Some(Role::Primary), Some("master")) => None,
        (None, _) => Some("HA is not configured here (no keepalived.primary section)".into()),
        (Some(Role::Backup), _) => {
            Some("this node is the backup (keepalived.backup): it never sends".into())
        }
        (Some(Role::Primary), None) => {
            Some("VRRP state unknown (no keepalived event recorded since boot)".into())
        }
        (Some(Role::Primary), Some(s)) => Some(format!(
            "this primary is VRRP {s}: the backup is active, nothing is sent to it"
        )),
    };
    Gate {
        role,
        state,
        active: reason.is_none(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_needs_primary_and_master() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        assert!(!gate(r).active);
        std::fs::create_dir_all(r.join("etc/config")).unwrap();
        std::fs::write(
            r.join("etc/config/keepalived"),
            "config vrrp_instance 'backup'\n",
        )
        .unwrap();
        std::fs::create_dir_all(r.join(sync_core::node::STATE_DIR)).unwrap();
        std::fs::write(
            r.join(sync_core::node::STATE_DIR).join("vrrp_state"),
            "master\n",
        )
        .unwrap();
        let g = gate(r);
        assert!(!g.active, "a backup that is master never sends");
        assert_eq!(g.role, Some(Role::Backup));
        std::fs::write(
            r.join("etc/config/keepalived"),
            "config vrrp_instance 'primary'\n",
        )
        .unwrap();
        assert!(gate(r).active);
        std::fs::write(
            r.join(sync_core::node::STATE_DIR).join("vrrp_state"),
            "backup\n",
        )
        .unwrap();
        let g = gate(r);
        assert!(!g.active);
        assert!(g.reason.unwrap().contains("VRRP backup"));
        std::fs::remove_file(r.join(sync_core::node::STATE_DIR).join("vrrp_state")).unwrap();
        assert!(gate(r).reason.unwrap().contains("unknown"));
    }
}

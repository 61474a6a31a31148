//! restore-hooks

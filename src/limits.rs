//! Process limits: enough open files for the connections the user asks for.

use kv_log_macro::{info, warn};

/// Raises the soft open-files limit to the hard limit and logs both, so 10 000
/// clients work without the user tuning `ulimit -n`.
pub(crate) fn raise_open_files() {
    let before = rlimit::Resource::NOFILE.get().ok();
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => {
            let hard = before.map(|(_, hard)| hard).unwrap_or(soft);
            info!("open files limit", {
                soft: soft,
                hard: hard,
                soft_before: before.map(|(soft, _)| soft).unwrap_or(soft),
            });
        }
        Err(e) => warn!("could not raise the open files limit", {
            error: log::kv::Value::from_display(&e),
        }),
    }
}

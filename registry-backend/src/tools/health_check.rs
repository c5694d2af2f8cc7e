//! `health_check`: whether the registry and its store answer.

use serde_json::{Value, json};

use super::Registry;
use crate::model::now_rfc3339;

/// Always succeeds: an unhealthy registry is a health report, not an error.
pub async fn run(registry: &Registry) -> Value {
    let (status, database, error) = match registry.store.ping().await {
        Ok(()) => ("healthy", "connected", None),
        Err(e) => ("unhealthy", "disconnected", Some(e.to_string())),
    };
    let mut report = json!({
        "status": status,
        "database": database,
        "store": registry.store.kind(),
        "instance": registry.instance,
        "timestamp": now_rfc3339(),
    });
    if let (Some(e), Some(obj)) = (error, report.as_object_mut()) {
        obj.insert("error".into(), json!(e));
    }
    report
}

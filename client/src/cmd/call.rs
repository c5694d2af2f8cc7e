//! `mcp-client call TOOL key=value …` (or `--json '{…}'`).

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

use super::Output;
use crate::connect::{Connection, result_text};

/// `key=value` pairs to a JSON object; a value that parses as JSON (number,
/// bool, array, object, quoted string) is taken as JSON, anything else as text.
pub fn parse_pairs(pairs: &[String]) -> Result<Map<String, Value>> {
    let mut args = Map::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("'{pair}' is not key=value"))?;
        if k.is_empty() {
            bail!("'{pair}' has an empty key");
        }
        let value =
            serde_json::from_str::<Value>(v).unwrap_or_else(|_| Value::String(v.to_owned()));
        args.insert(k.to_owned(), value);
    }
    Ok(args)
}

pub fn build_args(pairs: &[String], json: Option<&str>) -> Result<Value> {
    let mut args = match json {
        Some(text) => {
            match serde_json::from_str::<Value>(text).context("--json is not valid JSON")? {
                Value::Object(m) => m,
                _ => bail!("--json must be a JSON object"),
            }
        }
        None => Map::new(),
    };
    args.extend(parse_pairs(pairs)?);
    Ok(Value::Object(args))
}

/// Pretty text of a result: JSON text is re-indented, anything else as is.
pub fn pretty(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_owned())
}

/// Runs a call; returns Err (so the process exits non-zero) on a tool error.
pub async fn run(conn: &Connection, tool: &str, args: Value, output: Output) -> Result<()> {
    let result = conn.call(tool, args).await?;
    let is_error = result.is_error.unwrap_or(false);
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&result)?),
        Output::Pretty if !is_error => println!("{}", pretty(&result_text(&result))),
        Output::Pretty => {}
    }
    if is_error {
        let text = result_text(&result);
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or(text);
        bail!("{tool} failed: {message}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_take_json_values_or_text() {
        let v = build_args(
            &[
                "agent_id=a-1".into(),
                "limit=5".into(),
                "caps=[\"x\",\"y\"]".into(),
                "streaming=true".into(),
            ],
            Some(r#"{"domain":"d"}"#),
        )
        .unwrap();
        assert_eq!(v["agent_id"], "a-1");
        assert_eq!(v["limit"], 5);
        assert_eq!(v["caps"][1], "y");
        assert_eq!(v["streaming"], true);
        assert_eq!(v["domain"], "d");
        assert!(build_args(&["novalue".into()], None).is_err());
        assert!(build_args(&[], Some("[1]")).is_err());
    }
}

//! `mcp-client tools`: every tool with its description and parameters.

use anyhow::Result;
use rmcp::model::Tool;
use serde_json::{Value, json};

use super::Output;
use crate::connect::Connection;

fn params(tool: &Tool) -> Vec<(String, String, bool, String)> {
    let required: Vec<&str> = tool
        .input_schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = tool
        .input_schema
        .get("properties")
        .and_then(Value::as_object)
    else {
        return Vec::new();
    };
    props
        .iter()
        .map(|(name, schema)| {
            let ty = schema
                .get("type")
                .map(|t| match t {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .or_else(|| schema.get("anyOf").map(|_| "any of".into()))
                .unwrap_or_else(|| "value".into());
            let desc = schema
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            (name.clone(), ty, required.contains(&name.as_str()), desc)
        })
        .collect()
}

pub fn render(tools: &[Tool]) -> String {
    let mut out = String::new();
    for t in tools {
        out.push_str(&format!("{}\n", t.name));
        if let Some(d) = &t.description {
            out.push_str(&format!("    {d}\n"));
        }
        for (name, ty, required, desc) in params(t) {
            let req = if required { " (required)" } else { "" };
            out.push_str(&format!("    - {name}: {ty}{req}  {desc}\n"));
        }
    }
    out
}

pub async fn run(conn: &Connection, output: Output) -> Result<()> {
    let tools = conn.tools().await?;
    match output {
        Output::Json => {
            let v: Vec<Value> = tools
                .iter()
                .map(|t| json!({"name": t.name, "description": t.description, "inputSchema": t.input_schema, "annotations": t.annotations}))
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Pretty => {
            println!("{} tools\n", tools.len());
            print!("{}", render(&tools));
        }
    }
    Ok(())
}

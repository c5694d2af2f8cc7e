//! A scenario's data sets: named lists of values that `pick(set)` and
//! `next(set)` draw from, written inline or read from a CSV or JSON file.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use serde_json::Value;

#[derive(Debug, Default)]
pub struct DataSets {
    sets: BTreeMap<String, DataSet>,
    /// `next(set)` hands this shard every `shards`-th row from `shard` on.
    shard: u64,
    shards: u64,
}

#[derive(Debug)]
struct DataSet {
    rows: Vec<Value>,
    /// A CSV file's header: the fields every row has.
    fields: Option<Vec<String>>,
    cursor: AtomicU64,
}

impl DataSets {
    /// Reads every set of a scenario's `data` table; files are relative to `dir`
    /// (the scenario file's folder).
    pub fn load(spec: &BTreeMap<String, Value>, dir: &Path) -> Result<Self> {
        let mut sets = BTreeMap::new();
        for (name, v) in spec {
            let set = load_one(v, dir).with_context(|| format!("data set `{name}`"))?;
            if set.rows.is_empty() {
                bail!("data set `{name}` is empty");
            }
            sets.insert(name.clone(), set);
        }
        Ok(Self {
            sets,
            shard: 0,
            shards: 1,
        })
    }

    /// Data sets written in code (the registry shortcut, tests).
    pub fn from_lists<'a>(lists: impl IntoIterator<Item = (&'a str, Vec<Value>)>) -> Self {
        Self {
            sets: lists
                .into_iter()
                .map(|(n, rows)| {
                    (
                        n.to_owned(),
                        DataSet {
                            rows,
                            fields: None,
                            cursor: AtomicU64::new(0),
                        },
                    )
                })
                .collect(),
            shard: 0,
            shards: 1,
        }
    }

    pub fn set_shard(&mut self, shard: u64, shards: u64) {
        self.shard = shard;
        self.shards = shards.max(1);
    }

    pub fn contains(&self, name: &str) -> bool {
        self.sets.contains_key(name)
    }

    /// The fields every row of a CSV set has (None: not a CSV set).
    pub fn fields(&self, name: &str) -> Option<&[String]> {
        self.sets.get(name)?.fields.as_deref()
    }

    pub fn pick(&self, name: &str, rng: &mut fastrand::Rng) -> Option<Value> {
        let set = self.sets.get(name)?;
        Some(set.rows[rng.usize(..set.rows.len())].clone())
    }

    pub fn next(&self, name: &str) -> Option<Value> {
        let set = self.sets.get(name)?;
        let n = set.cursor.fetch_add(1, Ordering::Relaxed);
        let i = (n * self.shards + self.shard) % set.rows.len() as u64;
        Some(set.rows[i as usize].clone())
    }
}

fn load_one(v: &Value, dir: &Path) -> Result<DataSet> {
    let (rows, fields) = match v {
        Value::Array(rows) => (rows.clone(), None),
        Value::Object(m) if m.len() == 1 && m.contains_key("csv") => {
            let path = dir.join(file_name(&m["csv"])?);
            let (rows, fields) =
                read_csv(&path).with_context(|| format!("reading {}", path.display()))?;
            (rows, Some(fields))
        }
        Value::Object(m) if m.len() == 1 && m.contains_key("json") => {
            let path = dir.join(file_name(&m["json"])?);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            match serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?
            {
                Value::Array(rows) => (rows, None),
                _ => bail!("{} must hold a JSON array", path.display()),
            }
        }
        _ => bail!(r#"write a list of values, {{ csv = "file.csv" }} or {{ json = "file.json" }}"#),
    };
    Ok(DataSet {
        rows,
        fields,
        cursor: AtomicU64::new(0),
    })
}

fn file_name(v: &Value) -> Result<&str> {
    v.as_str().context("the file name must be a string")
}

/// A CSV file with a header row: one JSON object per record, every field a string.
fn read_csv(path: &Path) -> Result<(Vec<Value>, Vec<String>)> {
    let mut reader = csv::Reader::from_path(path)?;
    let fields: Vec<String> = reader.headers()?.iter().map(str::to_owned).collect();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record?;
        rows.push(Value::Object(
            fields
                .iter()
                .zip(record.iter())
                .map(|(k, v)| (k.clone(), Value::from(v)))
                .collect(),
        ));
    }
    Ok((rows, fields))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn csv_rows_become_objects_and_json_files_arrays() {
        let dir = std::env::temp_dir().join(format!("load-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("u.csv"), "name,city\nada,London\nbob,Paris\n").unwrap();
        std::fs::write(dir.join("ids.json"), "[1, 2, 3]").unwrap();
        std::fs::write(dir.join("obj.json"), "{\"a\": 1}").unwrap();
        std::fs::write(dir.join("empty.csv"), "name\n").unwrap();
        let spec = BTreeMap::from([
            ("users".to_owned(), json!({"csv": "u.csv"})),
            ("ids".to_owned(), json!({"json": "ids.json"})),
            ("inline".to_owned(), json!(["x"])),
        ]);
        let sets = DataSets::load(&spec, &dir).unwrap();
        assert_eq!(sets.fields("users").unwrap(), ["name", "city"]);
        assert_eq!(
            sets.next("users").unwrap(),
            json!({"name": "ada", "city": "London"})
        );
        assert_eq!(sets.next("ids").unwrap(), json!(1));
        assert_eq!(sets.next("inline").unwrap(), json!("x"));
        for (bad, why) in [
            (json!({"json": "obj.json"}), "JSON array"),
            (json!({"csv": "empty.csv"}), "is empty"),
            (json!({"csv": "missing.csv"}), "reading"),
            (json!({"yaml": "x"}), "write a list"),
        ] {
            let err = DataSets::load(&BTreeMap::from([("s".to_owned(), bad)]), &dir).unwrap_err();
            assert!(format!("{err:#}").contains(why), "{err:#}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shards_take_turns_at_next() {
        let mut a = DataSets::from_lists([("s", (0..6).map(Value::from).collect())]);
        let mut b = DataSets::from_lists([("s", (0..6).map(Value::from).collect())]);
        a.set_shard(0, 2);
        b.set_shard(1, 2);
        let got: Vec<Value> = (0..3)
            .flat_map(|_| [a.next("s").unwrap(), b.next("s").unwrap()])
            .collect();
        assert_eq!(got, (0..6).map(Value::from).collect::<Vec<_>>());
    }
}

//! The shipped files: provisioning YAML and dashboard JSON, and every SQL query in them.

use std::path::{Path, PathBuf};

use serde_json::Value;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

/// A file's name and parsed content.
pub struct Loaded {
    pub name: String,
    pub value: Value,
}

fn files(dir: &Path, ext: &[&str]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| ext.contains(&x))
        })
        .collect();
    out.sort();
    out
}

fn load(dir: &Path, ext: &[&str], parse: fn(&str) -> Result<Value, String>) -> Vec<Loaded> {
    files(dir, ext)
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read file");
            let value = parse(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            Loaded {
                name: p.file_name().expect("name").to_string_lossy().into_owned(),
                value,
            }
        })
        .collect()
}

pub fn parse_yaml(text: &str) -> Result<Value, String> {
    serde_yaml::from_str(text).map_err(|e| e.to_string())
}

pub fn parse_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

pub fn dashboards() -> Vec<Loaded> {
    load(&root().join("json"), &["json"], parse_json)
}

pub fn datasource_files() -> Vec<Loaded> {
    load(
        &root().join("provisioning/datasources"),
        &["yaml", "yml"],
        parse_yaml,
    )
}

pub fn provider_files() -> Vec<Loaded> {
    load(
        &root().join("provisioning/dashboards"),
        &["yaml", "yml"],
        parse_yaml,
    )
}

/// The example provisioning of one care team's organization.
pub fn team_datasource_files() -> Vec<Loaded> {
    load(
        &root().join("team-provisioning/datasources"),
        &["yaml", "yml"],
        parse_yaml,
    )
}

pub fn team_provider_files() -> Vec<Loaded> {
    load(
        &root().join("team-provisioning/dashboards"),
        &["yaml", "yml"],
        parse_yaml,
    )
}

/// Whom a dashboard is for, by its tag, and so which data source role runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Tag `operations`: the operations organization, as `vigil_grafana`.
    Operations,
    /// Tag `clinician`: a care team's organization, as the team's role.
    CareTeam,
}

pub fn audience(dashboard: &Value) -> Option<Audience> {
    let tags: Vec<&str> = dashboard["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    match (tags.contains(&"operations"), tags.contains(&"clinician")) {
        (true, false) => Some(Audience::Operations),
        (false, true) => Some(Audience::CareTeam),
        _ => None,
    }
}

/// The operations data source (a team's has the same uid and settings, another role).
pub struct Datasource {
    pub uid: String,
    pub timescaledb: bool,
    pub time_interval: String,
}

pub fn datasource() -> Datasource {
    let files = datasource_files();
    let ds = &files[0].value["datasources"][0];
    Datasource {
        uid: ds["uid"].as_str().expect("uid").to_string(),
        timescaledb: ds["jsonData"]["timescaledb"].as_bool().expect("flag"),
        time_interval: ds["jsonData"]["timeInterval"]
            .as_str()
            .unwrap_or("1m")
            .to_string(),
    }
}

/// Where a query lives, and how Grafana runs it.
#[derive(Debug, Clone)]
pub struct Query {
    /// "dashboard uid / panel title / refId", for messages.
    pub place: String,
    pub kind: QueryKind,
    pub format: String,
    pub sql: String,
    /// The panel's minimum interval (`interval`), if set.
    pub min_interval: Option<String>,
    pub max_data_points: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKind {
    Panel,
    Annotation,
    Variable,
}

/// Every panel (rows' nested panels included).
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// A query variable's SQL (the string form; the validator refuses the object form).
pub fn variable_sql(var: &Value) -> Option<&str> {
    var["query"].as_str()
}

/// Every SQL query of a dashboard: panel targets, annotation targets, query variables.
pub fn queries(dashboard: &Value) -> Vec<Query> {
    let uid = dashboard["uid"].as_str().unwrap_or("?");
    let mut out = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(Query {
                place: format!(
                    "{uid} / {} / {}",
                    p["title"].as_str().unwrap_or("?"),
                    t["refId"].as_str().unwrap_or("?")
                ),
                kind: QueryKind::Panel,
                format: t["format"].as_str().unwrap_or("").to_string(),
                sql: t["rawSql"].as_str().unwrap_or("").to_string(),
                min_interval: p["interval"].as_str().map(str::to_string),
                max_data_points: p["maxDataPoints"].as_i64(),
            });
        }
    }
    for a in dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if a["builtIn"].as_i64() == Some(1) {
            continue;
        }
        let t = &a["target"];
        out.push(Query {
            place: format!("{uid} / annotation {}", a["name"].as_str().unwrap_or("?")),
            kind: QueryKind::Annotation,
            format: t["format"].as_str().unwrap_or("").to_string(),
            sql: t["rawSql"].as_str().unwrap_or("").to_string(),
            min_interval: None,
            max_data_points: None,
        });
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if v["type"] == "query" {
            out.push(Query {
                place: format!("{uid} / variable {}", v["name"].as_str().unwrap_or("?")),
                kind: QueryKind::Variable,
                format: "table".into(),
                sql: variable_sql(v).unwrap_or("").to_string(),
                min_interval: None,
                max_data_points: None,
            });
        }
    }
    out
}

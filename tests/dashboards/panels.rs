//! Runs every query of every dashboard as Grafana would: variables resolved from their own
//! queries, both interpolation stages emulated, each range and each variable value, as the
//! role of the data source the dashboard is for (operations, or each care team's); then
//! checks the result has the shape its panel needs.

use std::{collections::HashMap, error::Error, time::Duration};

use serde_json::Value;
use time::{Date, OffsetDateTime, PrimitiveDateTime};
use tokio_postgres::{
    Client, Row, Statement,
    types::{FromSql, Type},
};

use crate::{
    db::{self, Reader, TeamLogin},
    grafana::{self, TimeRange, VarValue},
    model::{self, Audience, Loaded, Query, QueryKind},
};

/// The ranges every query runs over.
pub fn ranges(now: OffsetDateTime) -> Vec<(&'static str, TimeRange)> {
    let hour = Duration::from_secs(3600);
    vec![
        ("1h", TimeRange::ending_at(now, hour)),
        ("24h", TimeRange::ending_at(now, hour * 24)),
        ("14d", TimeRange::ending_at(now, hour * 24 * 14)),
        ("90d", TimeRange::ending_at(now, hour * 24 * 90)),
    ]
}

/// What running one query once gave.
pub struct Outcome {
    pub place: String,
    pub range: &'static str,
    pub variables: String,
    pub rows: usize,
    pub took: Duration,
}

/// Runs every query of every shipped dashboard over `ranges`, for every variable value:
/// operations dashboards as `vigil_grafana` on the owner's connection, care team dashboards
/// as each team's login. Returns the outcomes, or every failure.
pub async fn run_all(
    owner: &mut Client,
    teams: &mut [TeamLogin],
    ranges: &[(&'static str, TimeRange)],
    timescaledb: bool,
) -> Result<Vec<Outcome>, Vec<String>> {
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for file in model::dashboards() {
        match model::audience(&file.value) {
            Some(Audience::Operations) => {
                let mut reader = Reader::operations(owner);
                let run = Run {
                    who: "operations",
                    ranges,
                    timescaledb,
                };
                run.dashboard(&mut reader, &file, &mut outcomes, &mut failures)
                    .await;
            }
            Some(Audience::CareTeam) if teams.is_empty() => {
                failures.push(format!("{}: no care team role to run it as", file.name));
            }
            Some(Audience::CareTeam) => {
                for login in teams.iter_mut() {
                    let mut reader = Reader::team(&mut login.client);
                    let run = Run {
                        who: &login.team,
                        ranges,
                        timescaledb,
                    };
                    run.dashboard(&mut reader, &file, &mut outcomes, &mut failures)
                        .await;
                }
            }
            None => failures.push(format!("{}: no audience tag", file.name)),
        }
    }
    if failures.is_empty() {
        Ok(outcomes)
    } else {
        Err(failures)
    }
}

/// Who runs the dashboards, over which ranges, with which data source flag.
struct Run<'a> {
    who: &'a str,
    ranges: &'a [(&'static str, TimeRange)],
    timescaledb: bool,
}

impl Run<'_> {
    async fn dashboard(
        &self,
        reader: &mut Reader<'_>,
        file: &Loaded,
        outcomes: &mut Vec<Outcome>,
        failures: &mut Vec<String>,
    ) {
        let ds = model::datasource();
        let d = &file.value;
        let queries = model::queries(d);
        let panels_by_place = panel_options(d);
        for (label, range) in self.ranges {
            let combos = match variable_values(reader, d, range).await {
                Ok(c) => c,
                Err(e) => {
                    failures.push(format!("{} as {}: variables: {e}", file.name, self.who));
                    continue;
                }
            };
            for vars in &combos {
                let shown = format!("{}; as {}", show(vars), self.who);
                for q in queries.iter().filter(|q| q.kind != QueryKind::Variable) {
                    let interval = grafana::panel_interval(
                        range,
                        q.max_data_points.unwrap_or(1000),
                        q.min_interval.as_deref().unwrap_or(&ds.time_interval),
                    );
                    let at = format!("{} [{label}; {shown}]", q.place);
                    let sql = grafana::interpolate_frontend(&q.sql, vars, range, &interval)
                        .and_then(|s| {
                            grafana::interpolate_backend(&s, range, interval.1, self.timescaledb)
                        });
                    let sql = match sql {
                        Ok(s) => s,
                        Err(e) => {
                            failures.push(format!("{at}: {e}"));
                            continue;
                        }
                    };
                    match db::run_as(reader, &sql).await {
                        Ok((stmt, rows, took)) => {
                            let options = panels_by_place
                                .get(&q.place)
                                .cloned()
                                .unwrap_or(Value::Null);
                            if let Err(e) = check_shape(q, &options, &stmt, &rows) {
                                failures.push(format!("{at}: {e}\n{sql}"));
                            }
                            outcomes.push(Outcome {
                                place: q.place.clone(),
                                range: label,
                                variables: shown.clone(),
                                rows: rows.len(),
                                took,
                            });
                        }
                        Err(e) => failures.push(format!("{at}: {e}\n{sql}")),
                    }
                }
            }
        }
    }
}

/// Runs the query at `place` (dashboard uid / panel title / refId) as Grafana would with
/// these variable values, and returns its rows.
pub async fn run_one(
    reader: &mut Reader<'_>,
    place: &str,
    vars: &HashMap<String, VarValue>,
    range: &TimeRange,
    timescaledb: bool,
) -> Vec<Row> {
    let ds = model::datasource();
    let q = model::dashboards()
        .iter()
        .flat_map(|d| model::queries(&d.value))
        .find(|q| q.place == place)
        .unwrap_or_else(|| panic!("no query {place}"));
    let interval = grafana::panel_interval(
        range,
        q.max_data_points.unwrap_or(1000),
        q.min_interval.as_deref().unwrap_or(&ds.time_interval),
    );
    let sql = grafana::interpolate_frontend(&q.sql, vars, range, &interval)
        .and_then(|s| grafana::interpolate_backend(&s, range, interval.1, timescaledb))
        .unwrap_or_else(|e| panic!("{place}: {e}"));
    db::run_as(reader, &sql)
        .await
        .unwrap_or_else(|e| panic!("{place}: {e}"))
        .1
}

fn show(vars: &HashMap<String, VarValue>) -> String {
    let mut parts: Vec<String> = vars
        .iter()
        .map(|(k, v)| match v {
            VarValue::One(s) => format!("{k}={s}"),
            VarValue::Many(vs) => format!("{k}={}", vs.join("|")),
        })
        .collect();
    parts.sort();
    parts.join(" ")
}

/// Panel options (for `xField`) by the place name of each of the panel's queries.
fn panel_options(d: &Value) -> HashMap<String, Value> {
    let uid = d["uid"].as_str().unwrap_or("?");
    let mut out = HashMap::new();
    for p in model::panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let place = format!(
                "{uid} / {} / {}",
                p["title"].as_str().unwrap_or("?"),
                t["refId"].as_str().unwrap_or("?")
            );
            out.insert(place, p.clone());
        }
    }
    out
}

/// Every combination of variable values, resolving each query variable with the values of
/// the variables before it, as Grafana does on load. A variable without options has the
/// empty value, which `sqlstring` turns into `''`.
async fn variable_values(
    reader: &mut Reader<'_>,
    d: &Value,
    range: &TimeRange,
) -> Result<Vec<HashMap<String, VarValue>>, String> {
    let mut combos = vec![HashMap::new()];
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        let name = v["name"]
            .as_str()
            .ok_or("variable without a name")?
            .to_string();
        let multi = v["multi"].as_bool().unwrap_or(false);
        let mut next = Vec::new();
        for vars in combos {
            let options: Vec<String> = match v["type"].as_str() {
                Some("custom") => v["query"]
                    .as_str()
                    .unwrap_or("")
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
                Some("query") => {
                    let sql = model::variable_sql(v).unwrap_or("");
                    let sql =
                        grafana::interpolate_frontend(sql, &vars, range, &("1m".into(), 60_000))
                            .and_then(|s| grafana::interpolate_backend(&s, range, 60_000, false))?;
                    let (_, rows, _) = db::run_as(reader, &sql).await?;
                    rows.iter().map(|r| r.get::<_, String>("__value")).collect()
                }
                other => return Err(format!("variable type {other:?} is not emulated")),
            };
            let mut values: Vec<VarValue> = if multi {
                options
                    .iter()
                    .map(|o| VarValue::Many(vec![o.clone()]))
                    .collect()
            } else {
                options.iter().map(|o| VarValue::One(o.clone())).collect()
            };
            if v["includeAll"].as_bool().unwrap_or(false) && !options.is_empty() {
                values.push(VarValue::Many(options.clone()));
            }
            if values.is_empty() {
                values.push(VarValue::One(String::new()));
            }
            for value in values {
                let mut with = vars.clone();
                with.insert(name.clone(), value);
                next.push(with);
            }
        }
        combos = next;
    }
    Ok(combos)
}

const NUMBERS: &[Type] = &[
    Type::INT2,
    Type::INT4,
    Type::INT8,
    Type::FLOAT4,
    Type::FLOAT8,
    Type::NUMERIC,
];
const STRINGS: &[Type] = &[Type::TEXT, Type::VARCHAR, Type::NAME, Type::BPCHAR];
const TIMES: &[Type] = &[Type::TIMESTAMPTZ, Type::TIMESTAMP, Type::DATE];

fn column<'a>(stmt: &'a Statement, name: &str) -> Option<(usize, &'a Type)> {
    stmt.columns()
        .iter()
        .enumerate()
        .find(|(_, c)| c.name() == name)
        .map(|(i, c)| (i, c.type_()))
}

/// The result shape each use needs (shared/brief/grafana.md 2.10).
fn check_shape(q: &Query, panel: &Value, stmt: &Statement, rows: &[Row]) -> Result<(), String> {
    match (q.kind, q.format.as_str()) {
        (QueryKind::Panel, "time_series") => {
            let (i, ty) = column(stmt, "time").ok_or("time column is missing")?;
            if !TIMES.contains(ty) && !NUMBERS.contains(ty) {
                return Err(format!("time column has type {ty}"));
            }
            for c in stmt.columns() {
                if c.name() != "time"
                    && !NUMBERS.contains(c.type_())
                    && !STRINGS.contains(c.type_())
                {
                    return Err(format!(
                        "column {} has type {}: not a value or a label",
                        c.name(),
                        c.type_()
                    ));
                }
            }
            ascending(rows, i, "time")
        }
        (QueryKind::Panel, "table") => {
            if let Some(x) = panel["options"]["xField"].as_str() {
                let (i, ty) = column(stmt, x).ok_or_else(|| format!("x field {x} is missing"))?;
                if panel["type"] == "trend" {
                    if !NUMBERS.contains(ty) {
                        return Err(format!("trend x field {x} has type {ty}"));
                    }
                    ascending(rows, i, x)?;
                }
            }
            Ok(())
        }
        (QueryKind::Annotation, "table") => {
            let (i, ty) = column(stmt, "time").ok_or("annotation time column is missing")?;
            if !TIMES.contains(ty) {
                return Err(format!("annotation time has type {ty}"));
            }
            let (_, text) = column(stmt, "text").ok_or("annotation text column is missing")?;
            if !STRINGS.contains(text) {
                return Err(format!("annotation text has type {text}"));
            }
            ascending(rows, i, "time")
        }
        (kind, format) => Err(format!("{kind:?} query with format {format:?}")),
    }
}

/// Values of column `i` are present and in ascending order.
fn ascending(rows: &[Row], i: usize, name: &str) -> Result<(), String> {
    let mut last = f64::NEG_INFINITY;
    for r in rows {
        let v: Option<Ordered> = r.try_get(i).map_err(|e| format!("{name}: {e}"))?;
        let v = v.ok_or_else(|| format!("{name} is NULL"))?.0;
        if v < last {
            return Err(format!("{name} is not ascending"));
        }
        last = v;
    }
    Ok(())
}

/// Any time or number as one comparable value (seconds).
struct Ordered(f64);

impl<'a> FromSql<'a> for Ordered {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        let seconds = |t: OffsetDateTime| t.unix_timestamp_nanos() as f64 / 1e9;
        Ok(Ordered(match *ty {
            Type::TIMESTAMPTZ => seconds(OffsetDateTime::from_sql(ty, raw)?),
            Type::TIMESTAMP => seconds(PrimitiveDateTime::from_sql(ty, raw)?.assume_utc()),
            Type::DATE => seconds(Date::from_sql(ty, raw)?.midnight().assume_utc()),
            Type::INT2 => f64::from(i16::from_sql(ty, raw)?),
            Type::INT4 => f64::from(i32::from_sql(ty, raw)?),
            Type::INT8 => i64::from_sql(ty, raw)? as f64,
            Type::FLOAT4 => f64::from(f32::from_sql(ty, raw)?),
            Type::FLOAT8 => f64::from_sql(ty, raw)?,
            Type::NUMERIC => numeric(raw)?,
            _ => return Err(format!("{ty} is not a time or a number").into()),
        }))
    }

    fn accepts(ty: &Type) -> bool {
        TIMES.contains(ty) || NUMBERS.contains(ty)
    }
}

/// PostgreSQL's binary `numeric`: digit count, weight, sign, scale, base-10000 digits.
fn numeric(raw: &[u8]) -> Result<f64, Box<dyn Error + Sync + Send>> {
    let word = |i: usize| -> Result<i16, Box<dyn Error + Sync + Send>> {
        let b = raw.get(i * 2..i * 2 + 2).ok_or("short numeric")?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    };
    let (ndigits, weight, sign) = (word(0)?, word(1)?, word(2)? as u16);
    if sign == 0xC000 {
        return Err("NaN".into());
    }
    let mut v = 0f64;
    for k in 0..usize::try_from(ndigits)? {
        let exp = i32::from(weight) - i32::try_from(k)?;
        v += f64::from(word(4 + k)?) * 10_000f64.powi(exp);
    }
    Ok(if sign == 0x4000 { -v } else { v })
}

/// Fails with every problem listed.
pub fn assert_ok(result: Result<Vec<Outcome>, Vec<String>>) -> Vec<Outcome> {
    match result {
        Ok(o) => o,
        Err(failures) => panic!(
            "{} queries failed:\n\n{}",
            failures.len(),
            failures.join("\n\n")
        ),
    }
}

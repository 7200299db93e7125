//! The static checks: what Grafana itself rejects or logs when it loads these files, and
//! the version-sensitive SQL forms the brief says to avoid (shared/brief/grafana.md 0 and
//! 3.2). Each check returns readable problems; the tests below show that each one fires.

use std::{
    collections::{HashMap, HashSet},
    sync::LazyLock,
};

use regex::Regex;
use serde_json::Value;

use crate::{
    grafana::{MACRO, MACROS, VARIABLE},
    model::{Audience, Loaded, audience, panels, queries, variable_sql},
};

const DATASOURCE_TYPES: &[&str] = &["grafana-postgresql-datasource", "postgres"];
const FORMATS: &[&str] = &["time_series", "table"];
/// Variable formats whose quoting has been stable across Grafana versions.
const VARIABLE_FORMATS: &[&str] = &["sqlstring", "csv"];
/// Target keys the backend refuses ("query fill-parameters not supported").
const FILL_KEYS: &[&str] = &["fill", "fillInterval", "fillMode", "fillValue"];

/// The provisioning of one Grafana organization: operations (`vigil_grafana`, organization
/// 1) or a care team's (the team's role, its own organization, shared by its provider).
pub fn provisioning(datasources: &[Loaded], providers: &[Loaded], who: Audience) -> Vec<String> {
    let mut problems = Vec::new();
    let mut uids = HashSet::new();
    let mut orgs = HashSet::new();
    for f in datasources {
        if f.value["apiVersion"].as_i64() != Some(1) {
            problems.push(format!("{}: apiVersion must be 1", f.name));
        }
        for ds in f.value["datasources"].as_array().into_iter().flatten() {
            let name = ds["name"].as_str().unwrap_or("?");
            let at = format!("{} / {name}", f.name);
            if !DATASOURCE_TYPES.contains(&ds["type"].as_str().unwrap_or("")) {
                problems.push(format!("{at}: type must be grafana-postgresql-datasource"));
            }
            match ds["uid"].as_str() {
                Some(uid) if !uid.is_empty() => {
                    if !uids.insert(uid.to_string()) {
                        problems.push(format!("{at}: uid {uid} is used twice"));
                    }
                }
                _ => problems.push(format!("{at}: uid must be set, dashboards refer to it")),
            }
            if ds["access"] != "proxy" {
                problems.push(format!("{at}: access must be proxy"));
            }
            if ds["jsonData"]["database"]
                .as_str()
                .is_none_or(str::is_empty)
            {
                problems.push(format!("{at}: jsonData.database must be set"));
            }
            if !ds["database"].is_null() {
                problems.push(format!(
                    "{at}: use jsonData.database, not the legacy top-level database"
                ));
            }
            if !ds["jsonData"]["timescaledb"].is_boolean() {
                problems.push(format!("{at}: jsonData.timescaledb must be true or false"));
            }
            let org = ds["orgId"].as_i64().unwrap_or(1);
            orgs.insert(org);
            match who {
                Audience::Operations => {
                    if ds["user"] != "vigil_grafana" {
                        problems.push(format!(
                            "{at}: user must be the read-only role vigil_grafana"
                        ));
                    }
                    if org != 1 {
                        problems.push(format!("{at}: operations is organization 1"));
                    }
                }
                Audience::CareTeam => {
                    if ds["user"]
                        .as_str()
                        .is_none_or(|u| u.is_empty() || u == "vigil_grafana")
                    {
                        problems.push(format!(
                            "{at}: user must be the care team's role, not vigil_grafana"
                        ));
                    }
                    if org == 1 {
                        problems.push(format!(
                            "{at}: a care team needs its own organization, not organization 1"
                        ));
                    }
                }
            }
            let password = ds["secureJsonData"]["password"].as_str().unwrap_or("");
            if !(password.starts_with("${") && password.ends_with('}')) {
                problems.push(format!(
                    "{at}: the password must come from an environment variable"
                ));
            }
        }
    }
    if uids.len() != 1 {
        problems.push(format!("expected one data source, found {}", uids.len()));
    }
    let mut names = HashSet::new();
    for f in providers {
        if f.value["apiVersion"].as_i64() != Some(1) {
            problems.push(format!("{}: apiVersion must be 1", f.name));
        }
        for p in f.value["providers"].as_array().into_iter().flatten() {
            let name = p["name"].as_str().unwrap_or("");
            if name.is_empty() || !names.insert(name.to_string()) {
                problems.push(format!("{}: provider name {name:?} must be unique", f.name));
            }
            if p["type"] != "file" {
                problems.push(format!("{}: provider {name} must be of type file", f.name));
            }
            if p["options"]["path"].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{}: provider {name} needs options.path", f.name));
            }
            let org = p["orgId"].as_i64().unwrap_or(1);
            if !orgs.contains(&org) {
                problems.push(format!(
                    "{}: provider {name} loads into organization {org}, which has no Vigil data source",
                    f.name
                ));
            }
        }
    }
    problems
}

/// A care team's data source must be the one the dashboards were written for, under
/// another role: the same uid and interval.
pub fn same_data_source(operations: &[Loaded], team: &[Loaded]) -> Vec<String> {
    let first = |files: &[Loaded]| files.first().map(|f| f.value["datasources"][0].clone());
    let (Some(ops), Some(team)) = (first(operations), first(team)) else {
        return vec!["operations and team data sources must both be provisioned".into()];
    };
    let mut problems = Vec::new();
    for (what, a, b) in [
        ("uid", &ops["uid"], &team["uid"]),
        (
            "jsonData.timeInterval",
            &ops["jsonData"]["timeInterval"],
            &team["jsonData"]["timeInterval"],
        ),
    ] {
        if a != b {
            problems.push(format!(
                "the team data source's {what} {b} differs from operations' {a}"
            ));
        }
    }
    problems
}

static UID: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[a-z][a-z0-9-]{0,39}$").expect("re"));

pub fn dashboards(files: &[Loaded], datasource_uid: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut uids = HashSet::new();
    let mut titles = HashSet::new();
    for f in files {
        let d = &f.value;
        let at = f.name.as_str();
        let title = d["title"].as_str().unwrap_or("");
        if title.is_empty() {
            problems.push(format!("{at}: title must not be empty"));
        } else if !titles.insert(title.to_string()) {
            problems.push(format!(
                "{at}: title {title:?} is used by another dashboard"
            ));
        }
        let uid = d["uid"].as_str().unwrap_or("");
        if !UID.is_match(uid) {
            problems.push(format!("{at}: uid {uid:?} must match {}", UID.as_str()));
        } else if !uids.insert(uid.to_string()) {
            problems.push(format!("{at}: uid {uid} is used by another dashboard"));
        }
        if d["schemaVersion"].as_i64() != Some(42) {
            problems.push(format!("{at}: schemaVersion must be 42"));
        }
        if audience(d).is_none() {
            problems.push(format!(
                "{at}: exactly one of the tags operations and clinician says whose data source runs it"
            ));
        }
        problems.extend(layout(at, d));
        problems.extend(datasources_and_targets(at, d, datasource_uid));
        let names: HashSet<String> = d["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["name"].as_str().map(str::to_string))
            .collect();
        for q in queries(d) {
            problems.extend(sql(&q.place, &q.sql, &names));
        }
    }
    problems
}

fn layout(at: &str, d: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut ids = HashSet::new();
    let mut cells: HashMap<(i64, i64), String> = HashMap::new();
    for p in panels(d) {
        let title = p["title"].as_str().unwrap_or("?");
        match p["id"].as_i64() {
            Some(id) if ids.insert(id) => {}
            Some(id) => problems.push(format!("{at}: panel id {id} ({title}) is used twice")),
            None => problems.push(format!("{at}: panel {title} has no id")),
        }
        let g = &p["gridPos"];
        let (Some(x), Some(y), Some(w), Some(h)) = (
            g["x"].as_i64(),
            g["y"].as_i64(),
            g["w"].as_i64(),
            g["h"].as_i64(),
        ) else {
            problems.push(format!("{at}: panel {title} needs gridPos x, y, w and h"));
            continue;
        };
        if x < 0 || y < 0 || w < 1 || h < 1 || x + w > 24 {
            problems.push(format!(
                "{at}: panel {title} gridPos {x},{y} {w}x{h} is outside the 24-column grid"
            ));
            continue;
        }
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), title.to_string()) {
                    problems.push(format!("{at}: panel {title} overlaps panel {other}"));
                    break;
                }
            }
        }
    }
    problems.dedup();
    problems
}

fn datasources_and_targets(at: &str, d: &Value, uid: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut sources: Vec<(String, &Value)> = Vec::new();
    let mut targets: Vec<(String, &Value)> = Vec::new();
    for p in panels(d) {
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap_or("?");
        sources.push((format!("panel {title}"), &p["datasource"]));
        let mut refs = HashSet::new();
        let list = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        if list.is_empty() {
            problems.push(format!("{at}: panel {title} has no targets"));
        }
        // Panels that draw rows need table frames; a time series panel needs time series.
        let needed = match p["type"].as_str() {
            Some("table" | "barchart" | "trend") => Some("table"),
            Some("timeseries") => Some("time_series"),
            _ => None,
        };
        for t in list {
            let r = t["refId"].as_str().unwrap_or("");
            if let Some(format) = needed
                && t["format"].as_str().is_some_and(|f| f != format)
            {
                problems.push(format!(
                    "{at}: panel {title} target {r}: a {} panel needs format {format}",
                    p["type"].as_str().unwrap_or("?")
                ));
            }
            if r.is_empty() || !refs.insert(r.to_string()) {
                problems.push(format!("{at}: panel {title}: refId {r:?} must be unique"));
            }
            sources.push((format!("panel {title} target {r}"), &t["datasource"]));
            targets.push((format!("panel {title} target {r}"), t));
        }
    }
    for a in d["annotations"]["list"].as_array().into_iter().flatten() {
        if a["builtIn"].as_i64() == Some(1) {
            continue;
        }
        let name = format!("annotation {}", a["name"].as_str().unwrap_or("?"));
        sources.push((name.clone(), &a["datasource"]));
        targets.push((name, &a["target"]));
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let name = format!("variable {}", v["name"].as_str().unwrap_or("?"));
            sources.push((name.clone(), &v["datasource"]));
            // The legacy string form works with and without the new variable editor.
            if !v["query"].is_string() {
                problems.push(format!("{at}: {name}: query must be the SQL text"));
            } else if variable_sql(v).is_none_or(|q| q.trim().is_empty()) {
                problems.push(format!("{at}: {name}: query is empty"));
            }
        }
    }
    for (place, ds) in sources {
        if ds["uid"] != uid {
            problems.push(format!(
                "{at}: {place} uses data source {} instead of the provisioned {uid}",
                ds["uid"]
            ));
        }
    }
    for (place, t) in targets {
        if !FORMATS.contains(&t["format"].as_str().unwrap_or("")) {
            problems.push(format!(
                "{at}: {place}: format must be time_series or table (the frontend and backend defaults differ)"
            ));
        }
        if t["rawSql"].as_str().is_none_or(|s| s.trim().is_empty()) {
            problems.push(format!("{at}: {place}: rawSql is empty"));
        }
        if t["editorMode"] != "code" {
            problems.push(format!("{at}: {place}: editorMode must be code"));
        }
        for k in FILL_KEYS {
            if !t[*k].is_null() {
                problems.push(format!(
                    "{at}: {place}: {k} is refused by the backend (fill-parameters)"
                ));
            }
        }
    }
    problems
}

/// Lints one query's SQL text.
pub fn sql(place: &str, sql: &str, variables: &HashSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for c in MACRO.captures_iter(sql) {
        let name = &c[1];
        if !MACROS.contains(&name) {
            problems.push(format!("{place}: unknown macro ${name}( fails the query"));
        }
    }
    // The macro regex ends the arguments at the first `)`: an opening parenthesis inside
    // them means a nested call that Grafana cuts in half.
    for m in Regex::new(r"\$[_a-zA-Z0-9]+\(([^\)]*)\)")
        .expect("re")
        .captures_iter(sql)
    {
        if m[1].contains('(') {
            problems.push(format!(
                "{place}: nested parentheses in macro arguments: {}",
                &m[0]
            ));
        }
    }
    for comment in comments(sql) {
        if comment.contains('$') {
            problems.push(format!(
                "{place}: `$` inside a SQL comment is expanded by Grafana before 12.4: {comment}"
            ));
        }
    }
    let groups: Vec<&str> = Regex::new(r"\$__timeGroup\([^\)]*\)")
        .expect("re")
        .find_iter(sql)
        .map(|m| m.as_str())
        .collect();
    let distinct: HashSet<&str> = groups.iter().copied().collect();
    if distinct.len() != groups.len() {
        problems.push(format!(
            "{place}: a repeated $__timeGroup(...) is aliased in GROUP BY too; use $__timeGroupAlias and GROUP BY 1"
        ));
    }
    // Followed by a comma, the first occurrence gets `AS "time"` wherever it stands,
    // which breaks `GROUP BY $__timeGroup(...), metric`.
    if groups.iter().any(|g| {
        sql.find(g)
            .is_some_and(|i| sql[i + g.len()..].starts_with(','))
    }) {
        problems.push(format!(
            "{place}: $__timeGroup(...) followed by a comma is silently aliased; use $__timeGroupAlias and GROUP BY 1"
        ));
    }
    for c in VARIABLE.captures_iter(sql) {
        let whole = &c[0];
        let name = c
            .get(1)
            .or_else(|| c.get(2))
            .or_else(|| c.get(4))
            .map_or("", |m| m.as_str());
        if name.starts_with("__") {
            continue;
        }
        if !variables.contains(name) {
            problems.push(format!(
                "{place}: {whole} is not a variable of this dashboard"
            ));
            continue;
        }
        let format = c.get(6).map(|m| m.as_str());
        if c.get(4).is_none() || !format.is_some_and(|f| VARIABLE_FORMATS.contains(&f)) {
            problems.push(format!(
                "{place}: {whole} needs an explicit format: ${{{name}:sqlstring}} or ${{{name}:csv}}"
            ));
        }
    }
    problems
}

/// The comments of a SQL text, skipping quoted strings, quoted identifiers and
/// dollar-quoted bodies.
fn comments(sql: &str) -> Vec<&str> {
    static LEXEME: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r#"(?s)'(?:[^']|'')*'|"(?:[^"]|"")*"|(\$[A-Za-z_]*\$).*?|--[^\n]*|/\*.*?\*/"#)
            .expect("re")
    });
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(c) = LEXEME.captures_at(sql, at) {
        let m = c.get(0).expect("match");
        let text = m.as_str();
        if let Some(tag) = c.get(1) {
            // Skip to the closing tag of a dollar-quoted body.
            let body_start = tag.end();
            at = sql[body_start..]
                .find(tag.as_str())
                .map_or(sql.len(), |i| body_start + i + tag.as_str().len());
            continue;
        }
        if text.starts_with("--") || text.starts_with("/*") {
            out.push(text);
        }
        at = m.end().max(at + 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn loaded(name: &str, value: Value) -> Loaded {
        Loaded {
            name: name.into(),
            value,
        }
    }

    fn ds() -> Value {
        json!({"type": "grafana-postgresql-datasource", "uid": "vigil-pg"})
    }

    /// A minimal valid dashboard; tests break one thing at a time.
    fn good() -> Value {
        json!({
            "uid": "ok", "title": "OK", "schemaVersion": 42, "tags": ["clinician"],
            "annotations": {"list": []},
            "templating": {"list": [
                {"type": "query", "name": "team", "datasource": ds(),
                 "query": "SELECT id AS __value FROM care_teams"}]},
            "panels": [
                {"id": 1, "type": "timeseries", "title": "A", "datasource": ds(),
                 "gridPos": {"x": 0, "y": 0, "w": 12, "h": 8},
                 "targets": [{"refId": "A", "datasource": ds(), "format": "time_series",
                              "editorMode": "code",
                              "rawSql": "SELECT $__timeGroupAlias(t, $__interval), avg(v) FROM x WHERE $__timeFilter(t) AND team = ${team:sqlstring} GROUP BY 1 ORDER BY 1"}]},
                {"id": 2, "type": "table", "title": "B", "datasource": ds(),
                 "gridPos": {"x": 12, "y": 0, "w": 12, "h": 8},
                 "targets": [{"refId": "A", "datasource": ds(), "format": "table",
                              "editorMode": "code", "rawSql": "SELECT 1 -- one"}]}
            ]
        })
    }

    fn problems_of(edit: impl FnOnce(&mut Value)) -> Vec<String> {
        let mut d = good();
        edit(&mut d);
        dashboards(&[loaded("d.json", d)], "vigil-pg")
    }

    fn expect(edit: impl FnOnce(&mut Value), needle: &str) {
        let problems = problems_of(edit);
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "expected a problem containing {needle:?}, got {problems:#?}"
        );
    }

    fn sql_of(d: &mut Value, panel: usize) -> &mut Value {
        &mut d["panels"][panel]["targets"][0]["rawSql"]
    }

    #[test]
    fn the_minimal_dashboard_is_valid() {
        assert_eq!(problems_of(|_| {}), Vec::<String>::new());
    }

    #[test]
    fn the_json_model_is_checked() {
        expect(
            |d| d["schemaVersion"] = json!(39),
            "schemaVersion must be 42",
        );
        expect(|d| d["title"] = json!(""), "title must not be empty");
        expect(
            |d| d["uid"] = json!("Has Spaces"),
            "uid \"Has Spaces\" must match",
        );
        expect(
            |d| d["panels"][1]["id"] = json!(1),
            "panel id 1 (B) is used twice",
        );
        expect(
            |d| d["panels"][1]["gridPos"] = json!({"x": 0, "y": 0, "w": 12}),
            "needs gridPos",
        );
        expect(
            |d| d["panels"][1]["gridPos"]["x"] = json!(13),
            "outside the 24-column grid",
        );
        expect(
            |d| d["panels"][1]["gridPos"]["x"] = json!(6),
            "overlaps panel A",
        );
        expect(
            |d| d["tags"] = json!(["clinician", "operations"]),
            "exactly one of the tags",
        );
    }

    #[test]
    fn data_sources_and_targets_are_checked() {
        expect(
            |d| d["panels"][0]["datasource"]["uid"] = json!("other"),
            "panel A uses data source \"other\"",
        );
        expect(
            |d| d["panels"][0]["targets"][0]["datasource"]["uid"] = json!("other"),
            "panel A target A uses data source",
        );
        expect(
            |d| d["templating"]["list"][0]["datasource"]["uid"] = json!("x"),
            "variable team uses data source",
        );
        expect(
            |d| d["templating"]["list"][0]["query"] = json!(" "),
            "variable team: query is empty",
        );
        expect(
            |d| d["templating"]["list"][0]["query"] = json!({"rawSql": "SELECT 1"}),
            "variable team: query must be the SQL text",
        );
        expect(
            |d| {
                d["panels"][0]["targets"][0]
                    .as_object_mut()
                    .expect("object")
                    .remove("format");
            },
            "format must be time_series or table",
        );
        expect(|d| *sql_of(d, 0) = json!("  "), "rawSql is empty");
        expect(
            |d| d["panels"][0]["targets"][0]["fill"] = json!(true),
            "fill is refused",
        );
        expect(
            |d| d["panels"][0]["targets"][0]["editorMode"] = json!("builder"),
            "editorMode must be code",
        );
        expect(
            |d| d["panels"][1]["targets"][0]["format"] = json!("time_series"),
            "a table panel needs format table",
        );
        expect(
            |d| d["panels"][0]["targets"][0]["format"] = json!("table"),
            "a timeseries panel needs format time_series",
        );
        expect(
            |d| {
                let t = d["panels"][0]["targets"][0].clone();
                d["panels"][0]["targets"]
                    .as_array_mut()
                    .expect("array")
                    .push(t);
            },
            "refId \"A\" must be unique",
        );
    }

    #[test]
    fn sql_that_grafana_mangles_is_refused() {
        expect(
            |d| *sql_of(d, 1) = json!("SELECT $__timeFilterr(t)"),
            "unknown macro $__timeFilterr(",
        );
        expect(
            |d| *sql_of(d, 1) = json!("SELECT 1 WHERE $__timeFilter(date_trunc('h', t))"),
            "nested parentheses in macro arguments",
        );
        expect(
            |d| *sql_of(d, 1) = json!("SELECT 1 -- filtered by $__timeFilter"),
            "inside a SQL comment",
        );
        expect(
            |d| *sql_of(d, 1) = json!("SELECT 1 /* ${team:sqlstring} */"),
            "inside a SQL comment",
        );
        expect(
            |d| {
                *sql_of(d, 1) = json!(
                    "SELECT $__timeGroup(t, '1h'), avg(v) FROM x GROUP BY $__timeGroup(t, '1h')"
                )
            },
            "repeated $__timeGroup",
        );
        expect(
            |d| {
                *sql_of(d, 1) = json!(
                    "SELECT $__timeGroupAlias(t, '1h'), m, avg(v) FROM x GROUP BY $__timeGroup(t, '1h'), m"
                )
            },
            "followed by a comma is silently aliased",
        );
        expect(
            |d| *sql_of(d, 1) = json!("SELECT 1 WHERE team = $team"),
            "$team needs an explicit format",
        );
        expect(
            |d| *sql_of(d, 1) = json!("SELECT 1 WHERE team = ${team}"),
            "${team} needs an explicit format",
        );
        expect(
            |d| *sql_of(d, 1) = json!("SELECT 1 WHERE team = ${team:raw}"),
            "needs an explicit format",
        );
        expect(
            |d| *sql_of(d, 1) = json!("SELECT 1 WHERE team = ${nope:sqlstring}"),
            "is not a variable of this dashboard",
        );
    }

    #[test]
    fn dollars_in_strings_and_dollar_quotes_are_not_comments() {
        let text = "SELECT '-- not one', \"/* nor */\", $$ /* this */ $$, $f$ -- or $f$ /* one */";
        assert_eq!(comments(text), vec!["/* one */"]);
        let vars = HashSet::new();
        assert_eq!(
            sql("q", "SELECT '-- $__x' /* no dollar */", &vars),
            Vec::<String>::new()
        );
    }

    #[test]
    fn uids_and_titles_are_unique_across_dashboards() {
        let mut second = good();
        second["title"] = json!("Other");
        let problems = dashboards(
            &[loaded("a.json", good()), loaded("b.json", second)],
            "vigil-pg",
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("uid ok is used by another")),
            "{problems:?}"
        );
        let mut second = good();
        second["uid"] = json!("other");
        let problems = dashboards(
            &[loaded("a.json", good()), loaded("b.json", second)],
            "vigil-pg",
        );
        assert!(
            problems.iter().any(|p| p.contains("title \"OK\" is used")),
            "{problems:?}"
        );
    }

    fn good_provisioning() -> (Value, Value) {
        (
            json!({"apiVersion": 1, "datasources": [{
                "name": "Vigil", "uid": "vigil-pg", "type": "grafana-postgresql-datasource",
                "access": "proxy", "user": "vigil_grafana",
                "secureJsonData": {"password": "${PW}"},
                "jsonData": {"database": "vigil", "timescaledb": false}}]}),
            json!({"apiVersion": 1, "providers": [{"name": "p", "type": "file",
                                                   "options": {"path": "/x"}}]}),
        )
    }

    fn provisioning_problems(edit: impl FnOnce(&mut Value, &mut Value)) -> Vec<String> {
        let (mut ds, mut prov) = good_provisioning();
        edit(&mut ds, &mut prov);
        provisioning(
            &[loaded("ds.yaml", ds)],
            &[loaded("p.yaml", prov)],
            Audience::Operations,
        )
    }

    #[test]
    fn a_team_organization_is_checked() {
        let team = |edit: fn(&mut Value, &mut Value)| {
            let (mut ds, mut prov) = good_provisioning();
            ds["datasources"][0]["user"] = json!("${TEAM_ROLE}");
            ds["datasources"][0]["orgId"] = json!(2);
            prov["providers"][0]["orgId"] = json!(2);
            edit(&mut ds, &mut prov);
            provisioning(
                &[loaded("ds.yaml", ds)],
                &[loaded("p.yaml", prov)],
                Audience::CareTeam,
            )
        };
        assert_eq!(team(|_, _| {}), Vec::<String>::new());
        type Edit = fn(&mut Value, &mut Value);
        let cases: [(Edit, &str); 3] = [
            (
                |d, _| d["datasources"][0]["user"] = json!("vigil_grafana"),
                "the care team's role",
            ),
            (
                |d, p| {
                    d["datasources"][0]["orgId"] = json!(1);
                    p["providers"][0]["orgId"] = json!(1);
                },
                "its own organization",
            ),
            (
                |_, p| p["providers"][0]["orgId"] = json!(3),
                "has no Vigil data source",
            ),
        ];
        for (edit, needle) in cases {
            let problems = team(edit);
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "expected {needle:?} in {problems:#?}"
            );
        }
    }

    #[test]
    fn provisioning_files_are_checked() {
        assert_eq!(provisioning_problems(|_, _| {}), Vec::<String>::new());
        type Edit = Box<dyn FnOnce(&mut Value, &mut Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|d, _| d["apiVersion"] = json!(2)),
                "apiVersion must be 1",
            ),
            (
                Box::new(|d, _| d["datasources"][0]["type"] = json!("mysql")),
                "type must be",
            ),
            (
                Box::new(|d, _| d["datasources"][0]["uid"] = json!("")),
                "uid must be set",
            ),
            (
                Box::new(|d, _| d["datasources"][0]["access"] = json!("direct")),
                "access must be proxy",
            ),
            (
                Box::new(|d, _| d["datasources"][0]["jsonData"]["database"] = json!(null)),
                "jsonData.database must be set",
            ),
            (
                Box::new(|d, _| d["datasources"][0]["database"] = json!("vigil")),
                "legacy top-level",
            ),
            (
                Box::new(|d, _| d["datasources"][0]["jsonData"]["timescaledb"] = json!("true")),
                "timescaledb must be true or false",
            ),
            (
                Box::new(|d, _| d["datasources"][0]["user"] = json!("postgres")),
                "read-only role",
            ),
            (
                Box::new(|d, _| d["datasources"][0]["orgId"] = json!(2)),
                "operations is organization 1",
            ),
            (
                Box::new(|d, _| {
                    d["datasources"][0]["secureJsonData"]["password"] = json!("hunter2")
                }),
                "environment variable",
            ),
            (
                Box::new(|_, p| p["providers"][0]["type"] = json!("git")),
                "must be of type file",
            ),
            (
                Box::new(|_, p| p["providers"][0]["options"] = json!({})),
                "needs options.path",
            ),
            (
                Box::new(|_, p| {
                    let first = p["providers"][0].clone();
                    p["providers"].as_array_mut().expect("array").push(first);
                }),
                "must be unique",
            ),
        ];
        for (edit, needle) in cases {
            let problems = provisioning_problems(edit);
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "expected {needle:?} in {problems:#?}"
            );
        }
    }
}

//! The supply-chain check, computed from `cargo metadata`: every package comes
//! from crates.io (or is a workspace member), every licence expression is
//! satisfied by the licences allowed below, and no workspace crate asks for a
//! registry dependency by wildcard version.
//!
//! It replaces `cargo deny check licenses bans sources`, whose installation cost
//! CI five minutes of a clean run for these three checks (DECISIONS.md).
//! Advisories are not checked in CI: the RustSec database is a git repository on
//! GitHub, which these machines cannot reach. Run `cargo deny check advisories`
//! on a machine with network access before a release.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use serde_json::Value;

/// Licences compatible with distributing the project as "MIT OR Apache-2.0".
/// An expression `L WITH E` is allowed when `L` is (an exception only grants).
const ALLOWED: &[&str] = &[
    "MIT",
    "Apache-2.0",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "ISC",
    "Unicode-3.0",
    "Zlib",
    "CC0-1.0",
    "Unlicense",
    "MPL-2.0",
    "CDLA-Permissive-2.0",
];

/// The only registry packages may come from.
const CRATES_IO: &str = "registry+https://github.com/rust-lang/crates.io-index";

/// Runs the check on the workspace at `root`.
pub(crate) fn check_workspace(root: &Path) -> Result<(), String> {
    eprintln!("\n==> [licenses] cargo metadata --all-features, licences and sources");
    let meta = crate::deps::cargo_metadata(root, "licenses", &["--all-features"])?;
    let report = check_metadata(&meta)?;
    for (name, versions) in &report.duplicates {
        eprintln!(
            "note: two or more versions of {name}: {}",
            versions.join(", ")
        );
    }
    if report.problems.is_empty() {
        eprintln!(
            "<== [licenses] ok: {} packages, {} with more than one version",
            report.packages,
            report.duplicates.len()
        );
        Ok(())
    } else {
        Err(format!("[licenses]\n  {}", report.problems.join("\n  ")))
    }
}

/// What [`check_metadata`] found.
#[derive(Debug, Default)]
struct Report {
    packages: usize,
    problems: Vec<String>,
    /// Crates present in more than one version (reported, not fatal: some come
    /// from upstream crates we do not control).
    duplicates: BTreeMap<String, Vec<String>>,
}

fn check_metadata(meta: &Value) -> Result<Report, String> {
    let packages = meta["packages"]
        .as_array()
        .ok_or("[licenses] cargo metadata has no packages")?;
    let mut report = Report {
        packages: packages.len(),
        ..Report::default()
    };
    let mut versions: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in packages {
        let name = p["name"].as_str().unwrap_or("?");
        let version = p["version"].as_str().unwrap_or("?");
        let id = format!("{name} {version}");
        let member = p["source"].is_null();
        if !member {
            versions
                .entry(name.to_string())
                .or_default()
                .insert(version.to_string());
            if p["source"].as_str() != Some(CRATES_IO) {
                report
                    .problems
                    .push(format!("{id}: comes from {}, not crates.io", p["source"]));
            }
        }
        // Crates that are never published (xtask) need no licence.
        let private = p["publish"].as_array().is_some_and(Vec::is_empty);
        if !private {
            match p["license"].as_str() {
                None => report.problems.push(format!(
                    "{id}: no SPDX licence expression (a licence file alone is not checked)"
                )),
                Some(expr) => match allowed(expr) {
                    Ok(true) => {}
                    Ok(false) => report
                        .problems
                        .push(format!("{id}: licence `{expr}` is not allowed")),
                    Err(e) => report
                        .problems
                        .push(format!("{id}: licence `{expr}` does not parse: {e}")),
                },
            }
        }
        if member {
            for d in p["dependencies"].as_array().into_iter().flatten() {
                if d["req"].as_str() == Some("*") && d["path"].is_null() {
                    report.problems.push(format!(
                        "{id}: depends on {} by wildcard version",
                        d["name"].as_str().unwrap_or("?")
                    ));
                }
            }
        }
    }
    report.duplicates = versions
        .into_iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(n, v)| (n, v.into_iter().collect()))
        .collect();
    Ok(report)
}

/// Whether an SPDX licence expression is satisfied by [`ALLOWED`]. Besides
/// SPDX 2.3's `AND`, `OR`, `WITH` and parentheses, it reads the legacy `/` of
/// crates.io as `OR`.
fn allowed(expr: &str) -> Result<bool, String> {
    let tokens = tokenize(expr)?;
    let mut parser = Parser { tokens, at: 0 };
    let value = parser.or()?;
    match parser.tokens.get(parser.at) {
        None => Ok(value),
        Some(t) => Err(format!("unexpected `{t}`")),
    }
}

fn tokenize(expr: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    for c in expr.chars() {
        match c {
            '(' | ')' | '/' => {
                if !word.is_empty() {
                    tokens.push(std::mem::take(&mut word));
                }
                tokens.push(if c == '/' { "OR".into() } else { c.to_string() });
            }
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    tokens.push(std::mem::take(&mut word));
                }
            }
            c if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '+' | ':') => word.push(c),
            c => return Err(format!("character `{c}`")),
        }
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    Ok(tokens)
}

/// A recursive-descent evaluator: `or := and (OR and)*`,
/// `and := with (AND with)*`, `with := atom (WITH id)?`, `atom := id | ( or )`.
struct Parser {
    tokens: Vec<String>,
    at: usize,
}

impl Parser {
    fn next(&mut self) -> Option<String> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn peek_is(&self, word: &str) -> bool {
        self.tokens.get(self.at).is_some_and(|t| t == word)
    }

    fn or(&mut self) -> Result<bool, String> {
        let mut value = self.and()?;
        while self.peek_is("OR") {
            self.at += 1;
            // Both sides are parsed, so a malformed right side is an error.
            let right = self.and()?;
            value = value || right;
        }
        Ok(value)
    }

    fn and(&mut self) -> Result<bool, String> {
        let mut value = self.with()?;
        while self.peek_is("AND") {
            self.at += 1;
            let right = self.with()?;
            value = value && right;
        }
        Ok(value)
    }

    fn with(&mut self) -> Result<bool, String> {
        let value = self.atom()?;
        if self.peek_is("WITH") {
            self.at += 1;
            match self.next() {
                Some(e) if is_id(&e) => {}
                other => return Err(format!("an exception after WITH, not {other:?}")),
            }
        }
        Ok(value)
    }

    fn atom(&mut self) -> Result<bool, String> {
        match self.next() {
            Some(t) if t == "(" => {
                let value = self.or()?;
                match self.next() {
                    Some(t) if t == ")" => Ok(value),
                    other => Err(format!("`)` expected, not {other:?}")),
                }
            }
            Some(t) if is_id(&t) => Ok(ALLOWED.contains(&t.as_str())),
            other => Err(format!("a licence expected, not {other:?}")),
        }
    }
}

fn is_id(t: &str) -> bool {
    !matches!(t, "(" | ")" | "AND" | "OR" | "WITH")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_are_judged_by_their_operators() {
        for ok in [
            "MIT",
            "MIT OR Apache-2.0",
            "MIT/Apache-2.0",
            "Apache-2.0 / MIT",
            "Apache-2.0 WITH LLVM-exception OR Apache-2.0 OR MIT",
            "ISC AND (Apache-2.0 OR ISC)",
            "(MIT OR Apache-2.0) AND Unicode-3.0",
            "MIT OR Apache-2.0 OR LGPL-2.1-or-later",
            "CC0-1.0 OR MIT-0 OR Apache-2.0",
        ] {
            assert_eq!(allowed(ok), Ok(true), "{ok}");
        }
        for refused in [
            "GPL-3.0",
            "MIT AND GPL-3.0",
            "(MIT OR Apache-2.0) AND LGPL-2.1-or-later",
            "GPL-2.0 WITH Classpath-exception-2.0",
            "MIT-0",
        ] {
            assert_eq!(allowed(refused), Ok(false), "{refused}");
        }
        for malformed in [
            "",
            "MIT OR",
            "(MIT",
            "MIT AND AND ISC",
            "MIT WITH",
            "MIT, ISC",
        ] {
            assert!(allowed(malformed).is_err(), "{malformed}");
        }
    }

    fn package(name: &str, source: Option<&str>, license: Option<&str>) -> Value {
        serde_json::json!({
            "name": name,
            "version": "1.0.0",
            "source": source,
            "license": license,
            "publish": null,
            "dependencies": [],
        })
    }

    #[test]
    fn foreign_sources_bad_licences_and_wildcards_are_problems() {
        let mut member = package("fed-x", None, Some("MIT OR Apache-2.0"));
        member["dependencies"] = serde_json::json!([
            { "name": "serde", "req": "*", "path": null },
            { "name": "fed-y", "req": "*", "path": "/w/fed-y" },
        ]);
        let meta = serde_json::json!({ "packages": [
            member,
            package("good", Some(CRATES_IO), Some("MIT")),
            package("git", Some("git+https://example.com/x"), Some("MIT")),
            package("gpl", Some(CRATES_IO), Some("GPL-3.0")),
            package("none", Some(CRATES_IO), None),
        ]});
        let report = check_metadata(&meta).unwrap();
        let problems = report.problems.join("\n");
        assert_eq!(report.problems.len(), 4, "{problems}");
        for what in [
            "git 1.0.0: comes from",
            "gpl 1.0.0: licence",
            "none 1.0.0: no SPDX",
            "depends on serde",
        ] {
            assert!(problems.contains(what), "{what} in {problems}");
        }
    }
}

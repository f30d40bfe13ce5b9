//! The source tree is layered and the layers only call downwards: `cli` → `controller` and
//! `delivery` (siblings) → `serve` → `domain`. Checked on the source text, so an import that
//! would make a circle fails here before it compiles into a habit.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::support::repo_root;

/// Each layer and the layers it may name (besides itself and the crate root's error type).
const ALLOWED: &[(&str, &[&str])] = &[
    ("cli", &["controller", "delivery", "serve", "domain"]),
    ("controller", &["serve", "domain"]),
    ("delivery", &["serve", "domain"]),
    ("serve", &[]),
    ("domain", &[]),
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The layers a source text names through `crate::<layer>` or `crate::{…, <layer>, …}`.
fn named_layers(text: &str) -> BTreeSet<String> {
    let layers: BTreeSet<&str> = ALLOWED.iter().map(|(l, _)| *l).collect();
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut named = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        let heads: Vec<String> = match rest.strip_prefix('{') {
            // Only the top level of the group: `a::{b, c}` names `a`.
            Some(group) => {
                let mut depth = 0;
                let end = group
                    .char_indices()
                    .find(|(_, c)| {
                        match c {
                            '{' => depth += 1,
                            '}' if depth == 0 => return true,
                            '}' => depth -= 1,
                            _ => {}
                        }
                        false
                    })
                    .map_or(group.len(), |(i, _)| i);
                let mut items = Vec::new();
                let mut depth = 0;
                let mut start = 0;
                for (i, c) in group[..end].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            items.push(ident(&group[start..i]));
                            start = i + 1;
                        }
                        _ => {}
                    }
                }
                items.push(ident(&group[start..end]));
                items
            }
            None => vec![ident(rest)],
        };
        named.extend(heads.into_iter().filter(|h| layers.contains(h.as_str())));
    }
    named
}

#[test]
fn layers_only_call_downwards() {
    let src = repo_root().join("src");
    let mut wrong: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (layer, allowed) in ALLOWED {
        let mut files = Vec::new();
        rust_files(&src.join(layer), &mut files);
        assert!(!files.is_empty(), "src/{layer}/ has Rust files");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for named in named_layers(&text) {
                if named != *layer && !allowed.contains(&named.as_str()) {
                    let shown = file.strip_prefix(&src).unwrap().display().to_string();
                    wrong.entry(shown).or_default().insert(named);
                }
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers: {wrong:#?}");
}

#[test]
fn only_the_cli_knows_clap() {
    let src = repo_root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let knows: Vec<String> = files
        .iter()
        .filter(|f| !f.starts_with(src.join("cli")) && !f.ends_with("main.rs"))
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            text.contains("clap::") || text.contains("use clap")
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(knows.is_empty(), "clap below the CLI layer: {knows:?}");
}

#[test]
fn the_check_sees_a_wrong_import() {
    assert_eq!(
        named_layers("use crate::controller::plan;\nuse crate::domain::{arn, text};"),
        BTreeSet::from(["controller".to_string(), "domain".to_string()])
    );
    assert!(named_layers("use crate::{Error, Result};").is_empty());
    assert_eq!(
        named_layers("use crate::{Error, controller::{pass, plan::Op}, serve};"),
        BTreeSet::from(["controller".to_string(), "serve".to_string()])
    );
}

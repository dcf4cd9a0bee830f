//! `warrenctl config …`: configuration, checked the way the agent checks it.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use warren_node_agent::model::{
    ConfigError, FieldError, Object,
    object::{parse_document, split_documents},
    validate,
};

#[derive(Subcommand)]
pub enum Command {
    /// Check YAML/JSON files offline with the agent's own rules; exits
    /// non-zero if any object would be refused.
    Validate {
        /// Files to check (multi-document YAML or JSON).
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
    },
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Validate { files } => validate_files(&files),
    }
}

fn validate_files(files: &[PathBuf]) -> Result<()> {
    let mut objects = Vec::new();
    let mut errors: Vec<ConfigError> = Vec::new();
    for file in files {
        let source = file.display().to_string();
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {source}"))?;
        let docs = match split_documents(&text) {
            Ok(docs) => docs,
            Err(reason) => {
                errors.push(ConfigError {
                    kind: "file".into(),
                    object: source.clone(),
                    origin: None,
                    errors: vec![FieldError::new("", format!("not valid YAML: {reason}"))],
                });
                continue;
            }
        };
        for doc in docs {
            match parse_document(doc, &source) {
                Ok(object) => objects.push((source.clone(), object)),
                Err(err) => errors.push(err),
            }
        }
    }
    // References between the objects given: a route to a subset that the
    // host's DestinationRule does not define.
    let mut subsets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, object) in &objects {
        if let Object::DestinationRule(dr) = object {
            subsets
                .entry(dr.spec.host.clone())
                .or_default()
                .extend(dr.spec.subsets.iter().map(|s| s.name.clone()));
        }
    }
    for (source, object) in &objects {
        if let Object::VirtualService(vs) = object {
            let unknown = validate::unknown_subsets(vs, |host| subsets.get(host).cloned());
            if !unknown.is_empty() {
                let key = object.key();
                errors.push(ConfigError {
                    kind: key.kind.name().into(),
                    object: format!("{}/{}", key.namespace.unwrap_or_default(), key.name),
                    origin: Some(source.clone()),
                    errors: unknown,
                });
            }
        }
    }
    for (_, object) in &objects {
        println!("ok       {}", object.key());
    }
    for err in &errors {
        println!("REJECTED {err}");
    }
    if !errors.is_empty() {
        bail!(
            "{} of {} objects rejected",
            errors.len(),
            errors.len() + objects.len()
        );
    }
    Ok(())
}

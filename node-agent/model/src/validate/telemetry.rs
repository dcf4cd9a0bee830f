//! Telemetry checks: attachment, provider references, and the CEL
//! expressions of access-log filters and metric tags, which are compiled
//! here so a typo is refused with the object rather than found on a
//! request.

use crate::error::FieldError;
use crate::istio::telemetry::{
    AccessLogging, CustomTag, Metrics, ProviderRef, TagOperation, Telemetry, Tracing,
};

use super::{Report, authorization_policy::attachment, positive_duration};

/// The attributes (Envoy's names) a proxy gives an expression: what a
/// request, its answer and its connection are.
pub const ATTRIBUTES: [&str; 6] = [
    "request",
    "response",
    "source",
    "destination",
    "connection",
    "upstream",
];

/// Compiles a CEL expression of a Telemetry and checks it names only
/// [`ATTRIBUTES`]; the error says what is wrong.
///
/// Warren is stricter than Istio here: Envoy treats an attribute it does not
/// know as an error at run time (the line is not written), which an operator
/// finds only by its absence.
pub fn expression(text: &str) -> Result<cel::Program, String> {
    if text.trim().is_empty() {
        return Err("must not be empty".into());
    }
    let program = cel::Program::compile(text)
        .map_err(|e| format!("{text:?} is not a CEL expression: {e}"))?;
    let references = program.references();
    let mut unknown: Vec<&str> = references
        .variables()
        .into_iter()
        .filter(|v| !ATTRIBUTES.contains(v) && !is_loop_variable(text, v))
        .collect();
    unknown.sort_unstable();
    if !unknown.is_empty() {
        return Err(format!(
            "{text:?} names {}, which a proxy does not know (attributes: {})",
            unknown.join(", "),
            ATTRIBUTES.join(", ")
        ));
    }
    Ok(program)
}

/// Whether `name` is the variable a comprehension macro binds in `text`
/// (`request.headers.exists(k, k.startsWith('x-'))`), which the parser lists
/// among the expression's variables.
fn is_loop_variable(text: &str, name: &str) -> bool {
    const MACROS: [&str; 5] = ["all", "exists", "exists_one", "map", "filter"];
    MACROS.iter().any(|m| {
        text.match_indices(&format!(".{m}(")).any(|(at, found)| {
            text[at + found.len()..]
                .trim_start()
                .strip_prefix(name)
                .is_some_and(|rest| rest.trim_start().starts_with(','))
        })
    })
}

/// Checks a Telemetry on its own.
pub fn telemetry(telemetry: &Telemetry) -> Vec<FieldError> {
    let mut r = Report::default();
    let spec = &telemetry.spec;
    attachment(
        &mut r,
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    );
    for (i, logging) in spec.access_logging.iter().enumerate() {
        access_logging(&mut r, &format!("spec.accessLogging[{i}]"), logging);
    }
    for (i, metrics) in spec.metrics.iter().enumerate() {
        self::metrics(&mut r, &format!("spec.metrics[{i}]"), metrics);
    }
    for (i, tracing) in spec.tracing.iter().enumerate() {
        self::tracing(&mut r, &format!("spec.tracing[{i}]"), tracing);
    }
    r.into_errors()
}

fn providers(r: &mut Report, path: &str, providers: &[ProviderRef]) {
    for (i, provider) in providers.iter().enumerate() {
        if provider.name.is_empty() {
            r.error(format!("{path}.providers[{i}].name"), "required");
        }
    }
}

fn access_logging(r: &mut Report, path: &str, logging: &AccessLogging) {
    providers(r, path, &logging.providers);
    if let Some(filter) = &logging.filter
        && let Err(reason) = expression(&filter.expression)
    {
        r.error(format!("{path}.filter.expression"), reason);
    }
}

fn metrics(r: &mut Report, path: &str, metrics: &Metrics) {
    providers(r, path, &metrics.providers);
    if let Some(interval) = &metrics.reporting_interval {
        positive_duration(r, &format!("{path}.reportingInterval"), interval);
    }
    for (i, o) in metrics.overrides.iter().enumerate() {
        let path = format!("{path}.overrides[{i}]");
        if let Some(selector) = &o.r#match {
            match (&selector.metric, &selector.custom_metric) {
                (Some(_), Some(_)) => r.error(
                    format!("{path}.match"),
                    "only one of metric and customMetric may be set",
                ),
                (None, Some(name)) if name.is_empty() => {
                    r.error(format!("{path}.match.customMetric"), "must not be empty")
                }
                _ => {}
            }
        }
        for (tag, change) in &o.tag_overrides {
            let path = format!("{path}.tagOverrides.{tag}");
            if !is_label_name(tag) {
                r.error(
                    path.clone(),
                    format!("{tag:?} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)"),
                );
            } else if tag == "le" || tag.starts_with("__") {
                // `le` is a histogram bucket's own label, `__*` Prometheus's:
                // either would make the whole scrape unreadable.
                r.error(path.clone(), format!("{tag:?} is reserved by Prometheus"));
            }
            match (change.operation, change.value.as_deref()) {
                (TagOperation::Upsert, None) => {
                    r.error(format!("{path}.value"), "required for UPSERT")
                }
                (TagOperation::Upsert, Some(value)) => {
                    if let Err(reason) = expression(value) {
                        r.error(format!("{path}.value"), reason);
                    }
                }
                (TagOperation::Remove, Some(value)) if !value.is_empty() => r.error(
                    format!("{path}.value"),
                    "may only be set when operation is UPSERT",
                ),
                (TagOperation::Remove, _) => {}
            }
        }
    }
}

fn tracing(r: &mut Report, path: &str, tracing: &Tracing) {
    providers(r, path, &tracing.providers);
    if let Some(percentage) = tracing.random_sampling_percentage
        && !(0.0..=100.0).contains(&percentage)
    {
        r.error(
            format!("{path}.randomSamplingPercentage"),
            format!("{percentage} is not between 0 and 100"),
        );
    }
    for (name, tag) in &tracing.custom_tags {
        custom_tag(r, &format!("{path}.customTags.{name}"), tag);
    }
}

fn custom_tag(r: &mut Report, path: &str, tag: &CustomTag) {
    let sources = [
        tag.literal.is_some(),
        tag.environment.is_some(),
        tag.header.is_some(),
    ];
    if sources.iter().filter(|set| **set).count() != 1 {
        r.error(path, "needs exactly one of literal, environment and header");
    }
    for (field, named) in [("environment", &tag.environment), ("header", &tag.header)] {
        if named.as_ref().is_some_and(|n| n.name.is_empty()) {
            r.error(format!("{path}.{field}.name"), "required");
        }
    }
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<String> {
        let object: Telemetry = serde_yaml::from_str(yaml).expect("parses");
        telemetry(&object)
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    const HEAD: &str = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: demo}\n";

    #[test]
    fn istio_examples_are_accepted() {
        let yaml = format!(
            "{HEAD}spec:
  targetRefs:
  - {{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}}
  accessLogging:
  - providers: [{{name: envoy}}]
    filter: {{expression: \"response.code >= 400 || request.headers['x-debug'] == 'on'\"}}
  - match: {{mode: CLIENT}}
    disabled: true
  metrics:
  - providers: [{{name: prometheus}}]
    reportingInterval: 10s
    overrides:
    - match: {{metric: REQUEST_COUNT, mode: SERVER}}
      tagOverrides:
        request_host: {{value: request.host}}
        destination_version: {{operation: REMOVE}}
    - match: {{customMetric: request_duration_milliseconds}}
      disabled: true
    - disabled: false
  tracing:
  - randomSamplingPercentage: 10.5
    customTags:
      team: {{literal: {{value: payments}}}}
      user: {{header: {{name: x-user, defaultValue: none}}}}
"
        );
        assert_eq!(errors(&yaml), Vec::<String>::new());
    }

    #[test]
    fn mistakes_are_named() {
        let yaml = format!(
            "{HEAD}spec:
  selector: {{matchLabels: {{app: a}}}}
  targetRefs: [{{kind: Service, name: a}}]
  accessLogging:
  - providers: [{{name: ''}}]
    filter: {{expression: 'response.code >='}}
  - filter: {{expression: 'xds.cluster_name == \"a\"'}}
  - filter: {{expression: ' '}}
  metrics:
  - reportingInterval: soon
    overrides:
    - match: {{metric: REQUEST_COUNT, customMetric: requests_total}}
      tagOverrides:
        9lives: {{operation: REMOVE}}
        le: {{operation: REMOVE}}
        host: {{operation: UPSERT}}
        gone: {{operation: REMOVE, value: request.host}}
  tracing:
  - randomSamplingPercentage: 101
    customTags:
      both: {{literal: {{value: a}}, header: {{name: b}}}}
      none: {{}}
      nameless: {{environment: {{name: ''}}}}
"
        );
        let errors = errors(&yaml);
        let expected = [
            "spec: only one of selector, targetRef and targetRefs may be set",
            "spec.accessLogging[0].providers[0].name: required",
            "spec.accessLogging[0].filter.expression: \"response.code >=\" is not a CEL expression",
            "spec.accessLogging[1].filter.expression: \"xds.cluster_name == \\\"a\\\"\" names xds, which a proxy does not know",
            "spec.accessLogging[2].filter.expression: must not be empty",
            "spec.metrics[0].reportingInterval: \"soon\" is not a duration",
            "spec.metrics[0].overrides[0].match: only one of metric and customMetric may be set",
            "spec.metrics[0].overrides[0].tagOverrides.9lives: \"9lives\" is not a Prometheus label name",
            "spec.metrics[0].overrides[0].tagOverrides.le: \"le\" is reserved by Prometheus",
            "spec.metrics[0].overrides[0].tagOverrides.host.value: required for UPSERT",
            "spec.metrics[0].overrides[0].tagOverrides.gone.value: may only be set when operation is UPSERT",
            "spec.tracing[0].randomSamplingPercentage: 101 is not between 0 and 100",
            "spec.tracing[0].customTags.both: needs exactly one of literal, environment and header",
            "spec.tracing[0].customTags.none: needs exactly one of literal, environment and header",
            "spec.tracing[0].customTags.nameless.environment.name: required",
        ];
        for want in expected {
            assert!(
                errors.iter().any(|e| e.starts_with(want)),
                "missing {want:?} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    }

    #[test]
    fn expressions_compile_to_programs_naming_known_attributes() {
        assert!(expression("has(request.headers.x) && response.code == 200").is_ok());
        assert!(expression("source.address.startsWith('10.')").is_ok());
        // A macro's loop variable is no attribute.
        assert!(expression("request.headers.exists(k, k.startsWith('x-'))").is_ok());
        assert!(expression("[1, 2].map(n, n * 2).all( m , m > 0)").is_ok());
        let error = expression("request.headers.exists(k, j == 1)")
            .err()
            .unwrap_or_default();
        assert!(error.contains("names j,"), "{error}");
        let error = expression("node.id").err().unwrap_or_default();
        assert!(error.contains("names node"), "{error}");
    }
}

//! The waypoint's L7 configuration: the VirtualServices, DestinationRules
//! (with the BackendTLSPolicies that speak where they do not), attached
//! AuthorizationPolicies and RequestAuthentications, Telemetry objects and
//! extension providers the agent sent, compiled into a
//! [`RouteTable`], [`Policies`], an [`Authorizer`], an [`Authenticator`] and
//! [`Telemetries`], rebuilt
//! whole when either changes (there are few per namespace; a rebuild takes
//! microseconds and readers never wait for it: they hold the previous
//! [`Compiled`] until they are done), or when a file a DestinationRule's
//! `tls` reads changes ([`Tables::watch_tls_files`]).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use tracing::{info, warn};
use warren_api::{
    config::{
        BackendTls, Credential, DestinationRule, ExtensionProvider, L7Authentication,
        L7Authorization, Telemetry, TelemetryDefaults, VirtualService,
    },
    key,
};
use warren_model::istio::{
    AuthorizationPolicySpec, DestinationRuleSpec, RequestAuthenticationSpec, VirtualServiceSpec,
    mesh::ExtensionProvider as ProviderSpec, telemetry::TelemetrySpec,
};
use warren_ztunnel::drain;

use crate::{
    attachment::binds_waypoint,
    authn::{Authenticator, AuthnInput, keys::KeyStore},
    authz::{Authorizer, PolicyInput},
    ext_authz::{Provider, Providers},
    route::{RouteTable, VsInput, tcp::TcpTable},
    telemetry::{Defaults, Telemetries, TelemetryInput},
    upstream::{BackendTlsTable, Credentials, DrInput, Policies, Scope},
};

/// One generation of compiled routing.
#[derive(Default)]
pub struct Compiled {
    pub routes: RouteTable,
    /// `tcp` rules, for service ports whose protocol is TCP.
    pub tcp_routes: TcpTable,
    pub policies: Policies,
    pub authz: Authorizer,
    pub authn: Authenticator,
    /// The external authorizers CUSTOM policies name.
    pub ext_authz: Providers,
    /// What the Telemetry API asks of access lines and metrics.
    pub telemetry: Telemetries,
    /// Bumped on every rebuild: upstream clusters built from an older
    /// generation are rebuilt.
    pub generation: u64,
}

#[derive(Default)]
pub struct Tables {
    virtual_services: RwLock<BTreeMap<String, VsInput>>,
    destination_rules: RwLock<BTreeMap<String, DrInput>>,
    /// Secrets `credentialName`s name, by key (the agent sends only this
    /// namespace's).
    credentials: RwLock<BTreeMap<String, Arc<Credential>>>,
    /// BackendTLSPolicies as the agent resolved them, by key.
    backend_tls: RwLock<BTreeMap<String, BackendTls>>,
    authorizations: RwLock<BTreeMap<String, PolicyInput>>,
    authentications: RwLock<BTreeMap<String, AuthnInput>>,
    providers: RwLock<BTreeMap<String, Arc<Provider>>>,
    telemetries: RwLock<BTreeMap<String, TelemetryInput>>,
    /// Access-log and Prometheus providers, by key.
    telemetry_providers: RwLock<BTreeMap<String, Arc<ProviderSpec>>>,
    /// The mesh config's `defaultProviders`, when it has them.
    telemetry_defaults: RwLock<Option<Defaults>>,
    /// (policy, provider) pairs already warned about as undefined: said
    /// once, not on every rebuild.
    undefined: std::sync::Mutex<std::collections::BTreeSet<(String, String)>>,
    /// What the Telemetry objects ask that cannot be done, already said.
    telemetry_notes: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Fetched key sets, kept across rebuilds.
    keys: KeyStore,
    compiled: RwLock<Arc<Compiled>>,
    /// The scope of the last rebuild, for one that no update asks for.
    scope: RwLock<Option<Scope>>,
    /// One rebuild at a time: one started on older inputs must not finish
    /// last and put them back in force.
    rebuilding: Mutex<()>,
}

/// How often the files DestinationRules' `tls` read are looked at again: a
/// certificate renewed in place (cert-manager, say) is in force within it.
pub const TLS_FILE_RECHECK: Duration = Duration::from_secs(30);

/// How long a changed file is left to settle before it is read for good.
pub const TLS_FILE_SETTLE: Duration = Duration::from_secs(2);

impl Tables {
    pub fn current(&self) -> Arc<Compiled> {
        Arc::clone(&self.compiled.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Checks a VirtualService resource; the error names what is wrong.
    /// Checks a VirtualService resource (`key`); the error names what is
    /// wrong.
    pub fn parse_virtual_service(key: &str, vs: &VirtualService) -> Result<VsInput, String> {
        let spec: VirtualServiceSpec =
            serde_json::from_str(&vs.spec_json).map_err(|e| format!("spec_json: {e}"))?;
        Ok(VsInput {
            namespace: vs.namespace.clone(),
            name: vs.name.clone(),
            created: vs.created,
            hosts: vs.hosts.clone(),
            spec,
            from_routes: key.starts_with(key::SERVICE_ROUTES_PREFIX),
        })
    }

    pub fn parse_destination_rule(dr: &DestinationRule) -> Result<DrInput, String> {
        let spec: DestinationRuleSpec =
            serde_json::from_str(&dr.spec_json).map_err(|e| format!("spec_json: {e}"))?;
        Ok(DrInput {
            namespace: dr.namespace.clone(),
            name: dr.name.clone(),
            created: dr.created,
            host: dr.host.clone(),
            spec,
        })
    }

    /// Checks an attached AuthorizationPolicy resource, for the waypoint of
    /// Gateway `gateway` (any, when not known) in `namespace`.
    pub fn parse_authorization(
        policy: &L7Authorization,
        namespace: &str,
        gateway: Option<&str>,
    ) -> Result<PolicyInput, String> {
        let spec: AuthorizationPolicySpec =
            serde_json::from_str(&policy.spec_json).map_err(|e| format!("spec_json: {e}"))?;
        Ok(PolicyInput {
            namespace: policy.namespace.clone(),
            name: policy.name.clone(),
            // Attached to this waypoint, not another one (of this namespace
            // or of another, which the agent sends for their Services). An
            // agent older than `gateways` sets only `waypoint`: bound then,
            // as it was (more policy, never less).
            waypoint: binds_waypoint(&policy.namespace, &policy.gateways, namespace, gateway)
                || (policy.namespace == namespace && policy.gateways.is_empty() && policy.waypoint),
            services: policy.services.clone(),
            spec,
        })
    }

    /// Checks an attached RequestAuthentication resource, bound as
    /// [`Tables::parse_authorization`] binds a policy.
    pub fn parse_authentication(
        ra: &L7Authentication,
        namespace: &str,
        gateway: Option<&str>,
    ) -> Result<AuthnInput, String> {
        let spec: RequestAuthenticationSpec =
            serde_json::from_str(&ra.spec_json).map_err(|e| format!("spec_json: {e}"))?;
        Ok(AuthnInput {
            namespace: ra.namespace.clone(),
            name: ra.name.clone(),
            waypoint: binds_waypoint(&ra.namespace, &ra.gateways, namespace, gateway),
            services: ra.services.clone(),
            spec,
        })
    }

    /// Checks an extension provider of the mesh config: an external
    /// authorizer or a telemetry provider.
    pub fn parse_provider(provider: &ExtensionProvider) -> Result<ParsedProvider, String> {
        let spec: ProviderSpec =
            serde_json::from_str(&provider.spec_json).map_err(|e| format!("spec_json: {e}"))?;
        match spec.authz_protocol() {
            Some(_) => Provider::compile(&spec).map(|p| ParsedProvider::Authz(Arc::new(p))),
            None => Ok(ParsedProvider::Telemetry(Arc::new(spec))),
        }
    }

    /// Checks a Telemetry and compiles its expressions, bound as
    /// [`Tables::parse_authorization`] binds a policy.
    pub fn parse_telemetry(
        telemetry: &Telemetry,
        namespace: &str,
        gateway: Option<&str>,
    ) -> Result<TelemetryInput, String> {
        let spec: TelemetrySpec =
            serde_json::from_str(&telemetry.spec_json).map_err(|e| format!("spec_json: {e}"))?;
        let mut input =
            TelemetryInput::compile(telemetry.namespace.clone(), telemetry.name.clone(), spec)?;
        input.created = telemetry.created;
        input.namespace_wide = telemetry.namespace_wide;
        input.mesh_wide = telemetry.mesh_wide;
        input.waypoint = binds_waypoint(
            &telemetry.namespace,
            &telemetry.gateways,
            namespace,
            gateway,
        );
        input.services = telemetry.services.clone();
        Ok(input)
    }

    pub fn parse_telemetry_defaults(defaults: &TelemetryDefaults) -> Result<Defaults, String> {
        Defaults::new(
            defaults.metrics.clone(),
            defaults.access_logging.clone(),
            defaults.tracing.clone(),
            defaults.access_log_file.clone(),
            &defaults.access_log_format,
            &defaults.access_log_encoding,
        )
    }

    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = read(&self.virtual_services).keys().cloned().collect();
        keys.extend(read(&self.destination_rules).keys().cloned());
        keys.extend(read(&self.credentials).keys().cloned());
        keys.extend(read(&self.backend_tls).keys().cloned());
        keys.extend(read(&self.authorizations).keys().cloned());
        keys.extend(read(&self.authentications).keys().cloned());
        keys.extend(read(&self.providers).keys().cloned());
        keys.extend(read(&self.telemetries).keys().cloned());
        keys.extend(read(&self.telemetry_providers).keys().cloned());
        if read(&self.telemetry_defaults).is_some() {
            keys.push(key::TELEMETRY_DEFAULTS.to_owned());
        }
        keys
    }

    pub fn upsert_virtual_service(&self, key: String, vs: VsInput) {
        write(&self.virtual_services).insert(key, vs);
    }

    pub fn upsert_destination_rule(&self, key: String, dr: DrInput) {
        write(&self.destination_rules).insert(key, dr);
    }

    pub fn upsert_credential(&self, key: String, credential: Credential) {
        write(&self.credentials).insert(key, Arc::new(credential));
    }

    pub fn upsert_backend_tls(&self, key: String, tls: BackendTls) {
        write(&self.backend_tls).insert(key, tls);
    }

    pub fn upsert_authorization(&self, key: String, policy: PolicyInput) {
        write(&self.authorizations).insert(key, policy);
    }

    pub fn upsert_authentication(&self, key: String, ra: AuthnInput) {
        write(&self.authentications).insert(key, ra);
    }

    pub fn upsert_provider(&self, key: String, provider: ParsedProvider) {
        // A name may change kind: it is one or the other.
        match provider {
            ParsedProvider::Authz(provider) => {
                write(&self.telemetry_providers).remove(&key);
                write(&self.providers).insert(key, provider);
            }
            ParsedProvider::Telemetry(spec) => {
                write(&self.providers).remove(&key);
                write(&self.telemetry_providers).insert(key, spec);
            }
        }
    }

    pub fn upsert_telemetry(&self, key: String, telemetry: TelemetryInput) {
        write(&self.telemetries).insert(key, telemetry);
    }

    pub fn set_telemetry_defaults(&self, defaults: Defaults) {
        *write(&self.telemetry_defaults) = Some(defaults);
    }

    /// Forgets `key`; false if it was not an L7 resource.
    pub fn remove(&self, key: &str) -> bool {
        write(&self.virtual_services).remove(key).is_some()
            || write(&self.destination_rules).remove(key).is_some()
            || write(&self.credentials).remove(key).is_some()
            || write(&self.backend_tls).remove(key).is_some()
            || write(&self.authorizations).remove(key).is_some()
            || write(&self.authentications).remove(key).is_some()
            || write(&self.providers).remove(key).is_some()
            || write(&self.telemetries).remove(key).is_some()
            || write(&self.telemetry_providers).remove(key).is_some()
            || (key == key::TELEMETRY_DEFAULTS && write(&self.telemetry_defaults).take().is_some())
    }

    /// Compiles what is held and makes it current. Errors were checked when
    /// each resource came in, except those between objects (two
    /// VirtualServices claiming a host), which are logged here.
    pub fn rebuild(&self, scope: Scope) {
        let one = self.one_rebuild();
        self.rebuild_alone(scope, &one);
    }

    fn one_rebuild(&self) -> std::sync::MutexGuard<'_, ()> {
        self.rebuilding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// [`Tables::rebuild`], with the rebuild lock held (`_one`).
    fn rebuild_alone(&self, scope: Scope, _one: &std::sync::MutexGuard<'_, ()>) {
        *write(&self.scope) = Some(scope.clone());
        let namespace = scope.namespace.clone();
        // Oldest first, then by namespace and name (Istio's precedence).
        let mut virtual_services: Vec<VsInput> =
            read(&self.virtual_services).values().cloned().collect();
        virtual_services.sort_by(|a, b| {
            (a.created, &a.namespace, &a.name).cmp(&(b.created, &b.namespace, &b.name))
        });
        let (routes, route_errors) = RouteTable::build(virtual_services.iter().cloned());
        let (tcp_routes, tcp_errors) = TcpTable::build(virtual_services);
        // Taken out first: building reads the files `tls` names, and an
        // update must not wait on that to file a rule.
        let destination_rules: Vec<DrInput> =
            read(&self.destination_rules).values().cloned().collect();
        // By name: a waypoint is sent only its own namespace's.
        let credentials: Credentials = read(&self.credentials)
            .values()
            .filter(|c| c.namespace == namespace)
            .map(|c| (c.name.clone(), Arc::clone(c)))
            .collect();
        let (policies, policy_errors) =
            Policies::build_with(destination_rules, scope, &credentials);
        let (backend_tls, backend_tls_errors) = {
            let held = read(&self.backend_tls);
            BackendTlsTable::build(held.iter().map(|(key, tls)| (key.as_str(), tls)))
        };
        let policies = policies.with_backend_tls(backend_tls);
        for error in &backend_tls_errors {
            warn!(%error, "BackendTLSPolicy not applied");
        }
        for error in route_errors.iter().chain(&tcp_errors) {
            warn!(%error, "VirtualService not (fully) applied");
        }
        for error in &policy_errors {
            warn!(%error, "DestinationRule not (fully) applied");
        }
        let authz = Authorizer::build(read(&self.authorizations).values().cloned());
        let authn = Authenticator::build(read(&self.authentications).values().cloned(), &self.keys);
        let ext_authz = Providers::new(read(&self.providers).values().cloned());
        let undefined = authz
            .custom_providers()
            .filter(|(_, provider)| ext_authz.get(provider).is_none())
            .map(|(policy, provider)| (policy, provider.to_owned()))
            .collect();
        say_new(&self.undefined, undefined, |(policy, provider)| {
            warn!(
                %policy,
                %provider,
                defined = ?ext_authz.names().collect::<Vec<_>>(),
                "a CUSTOM AuthorizationPolicy names an extension provider the mesh config does not define: requests its rules match are denied"
            );
        });
        let telemetry = Telemetries::build(
            read(&self.telemetries).values(),
            &read(&self.telemetry_providers),
            &read(&self.telemetry_defaults).clone().unwrap_or_default(),
            &namespace,
        );
        say_new(&self.telemetry_notes, telemetry.notes.clone(), |note| {
            warn!(%note, "a Telemetry is not (fully) applied");
        });
        let mut compiled = write(&self.compiled);
        let generation = compiled.generation + 1;
        *compiled = Arc::new(Compiled {
            routes,
            tcp_routes,
            policies,
            authz,
            authn,
            ext_authz,
            telemetry,
            generation,
        });
    }
}

impl Tables {
    /// Compiles again if a file a DestinationRule's `tls` reads holds
    /// something else than when compiled; says whether it did.
    pub fn recheck_tls_files(&self) -> bool {
        // Under the rebuild lock: the scope read is the last rebuild's, and no
        // update's rebuild can come between.
        let one = self.one_rebuild();
        if !self.current().policies.tls_files_changed() {
            return false;
        }
        let Some(scope) = read(&self.scope).clone() else {
            return false;
        };
        info!("a file a DestinationRule's tls reads has changed: compiling the rules again");
        self.rebuild_alone(scope, &one);
        true
    }

    /// Every [`TLS_FILE_RECHECK`] until the drain, [`Tables::recheck_tls_files`]
    /// (off the runtime's threads: it reads files). A change is taken up
    /// [`TLS_FILE_SETTLE`] after it is seen, so that a file caught half
    /// written, or a certificate renewed before its key, is read whole.
    pub async fn watch_tls_files(self: Arc<Self>, mut drain: drain::Watch) {
        let mut tick = tokio::time::interval(TLS_FILE_RECHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let tables = Arc::clone(&self);
                    let changed = tokio::task::spawn_blocking(move || {
                        tables.current().policies.tls_files_changed()
                    });
                    if !matches!(changed.await, Ok(true)) {
                        continue;
                    }
                    tokio::time::sleep(TLS_FILE_SETTLE).await;
                    let tables = Arc::clone(&self);
                    let _ = tokio::task::spawn_blocking(move || tables.recheck_tls_files()).await;
                }
                () = drain.draining() => return,
            }
        }
    }
}

/// Says each of `now` that was not in force at the last rebuild, then
/// remembers `now`: a problem is said once, and again if it comes back
/// after being mended.
fn say_new<T: Ord>(
    said: &std::sync::Mutex<std::collections::BTreeSet<T>>,
    now: std::collections::BTreeSet<T>,
    say: impl Fn(&T),
) {
    let mut said = said.lock().unwrap_or_else(|p| p.into_inner());
    for item in now.iter().filter(|item| !said.contains(item)) {
        say(item);
    }
    *said = now;
}

/// An extension provider, by what the waypoint does with it.
pub enum ParsedProvider {
    Authz(Arc<Provider>),
    Telemetry(Arc<ProviderSpec>),
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use warren_api::config::L7Authorization;

    use super::Tables;

    #[test]
    fn a_policy_binds_only_the_waypoint_of_the_gateway_it_names() {
        let mut policy = L7Authorization {
            name: "deny".into(),
            namespace: "demo".into(),
            waypoint: true,
            gateways: vec!["special".into()],
            services: vec!["app".into()],
            spec_json: r#"{"action":"DENY"}"#.into(),
        };
        let bound = |namespace: &str, gateway: Option<&str>| {
            Tables::parse_authorization(&policy, namespace, gateway)
                .map(|p| (p.waypoint, p.services))
        };
        let app = vec!["app".to_owned()];
        assert_eq!(bound("demo", Some("special")), Ok((true, app.clone())));
        // The namespace's other waypoint, and a waypoint elsewhere that may
        // serve demo's Services: only the Service attachment holds.
        assert_eq!(bound("demo", Some("waypoint")), Ok((false, app.clone())));
        assert_eq!(bound("infra", Some("special")), Ok((false, app.clone())));
        // A waypoint not told its Gateway errs on the side of more policy.
        assert_eq!(bound("demo", None), Ok((true, app.clone())));
        // From an agent older than `gateways`: bound, as before.
        policy.gateways.clear();
        let bound = |namespace: &str, gateway: Option<&str>| {
            Tables::parse_authorization(&policy, namespace, gateway).map(|p| p.waypoint)
        };
        assert_eq!(bound("demo", Some("waypoint")), Ok(true));
        assert_eq!(bound("infra", Some("waypoint")), Ok(false));
    }
}

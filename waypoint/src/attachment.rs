//! Whom a policy attached by `targetRef(s)` binds, for AuthorizationPolicy
//! and RequestAuthentication alike: this waypoint (every request it serves)
//! or Services of the policy's namespace (their requests, through whichever
//! waypoint serves them).

/// Whether a policy of `namespace` naming waypoint Gateways `gateways`
/// binds this waypoint, of `my_namespace` and Gateway `my_gateway` (any
/// Gateway of its namespace when not known: more policy, never less).
pub fn binds_waypoint(
    namespace: &str,
    gateways: &[String],
    my_namespace: &str,
    my_gateway: Option<&str>,
) -> bool {
    namespace == my_namespace && gateways.iter().any(|g| my_gateway.is_none_or(|me| g == me))
}

/// Whether a policy bound to this waypoint (`waypoint`), or to `services`
/// of `namespace`, applies to a request for `service` of
/// `service_namespace`.
pub fn applies(
    waypoint: bool,
    namespace: &str,
    services: &[String],
    service_namespace: &str,
    service: &str,
) -> bool {
    waypoint || (namespace == service_namespace && services.iter().any(|s| s == service))
}

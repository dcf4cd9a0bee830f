//! Warren's privileged end-to-end tests: real clusters of network-namespace
//! nodes, one module per subject. They are one test binary, not one per
//! file: each binary links the whole workspace, and twenty of them took
//! 620 MB of disk (a CI machine once ran out while building). The harness
//! runs two tests at a time; every test brings up a cluster of its own
//! (`warren_testbed::Cluster` claims a fresh id), so they share no
//! namespace, cgroup, pin or address.

mod chart;
mod cni;
mod datapath;
mod dns;
mod enrollment;
mod identity;
mod mesh;
mod testbed;
mod waypoint;
mod waypoint_authz;
mod waypoint_backend_tls;
mod waypoint_choice;
mod waypoint_deploy;
mod waypoint_egress;
mod waypoint_ext_authz;
mod waypoint_http_route;
mod waypoint_jwt;
mod waypoint_locality;
mod waypoint_resilience;
mod waypoint_telemetry;
mod waypoint_tls;
mod waypoint_workload;
mod ztunnel_scale;
mod ztunnel_upgrade;

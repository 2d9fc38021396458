//! Integration tests of the `shellwego` binary: one test binary (link once).
//! `binary`: the server process (start-up, bootstrap, logs, signals, --help);
//! `client`: the CLI client commands against a real server;
//! `apps_cli`: `apps` and `nodes` against a real `shellwego up`;
//! `deploy_cli`: `deploy` and `deployments` against a real `shellwego up`;
//! `orphans`: what `up` leaves on the host when killed, emptied or stopped.
//! `walkthrough`: the README's walkthrough, run as written.
//! `support`: what they share on top of `shellwego_testkit` (which starts
//! the platforms: `shellwego_testkit::platform::Platform`).

mod apps_cli;
mod autoscale_cli;
mod binary;
mod client;
mod cluster;
mod deploy_cli;
mod domains_cli;
mod exec_cli;
mod ha;
mod logs_cli;
mod metrics_cli;
mod network;
mod orphans;
mod platform;
mod secrets_cli;
mod support;
mod walkthrough;

//! The reconciler: turns an app's desired state into instances placed on
//! nodes. It runs inside the API's transactions (so an answer already
//! shows the instances placed) and as the [`Reconcile`] controller, which
//! takes apps whose instances need attention (unplaced, on a node that is
//! no longer ready, replacements in flight) whenever desired state
//! changes, every two seconds regardless (so several control planes on one
//! database converge), and every app now and then.
//!
//! One mechanism covers every change of what runs where:
//! - an instance that must go while the app keeps serving (an older app
//!   version after a change or a rolling restart, or an instance on a
//!   draining node) is *retiring*: a replacement of the current version is
//!   created next to it (`replaces`), and only once the replacement reports
//!   healthy is the retiring instance told to stop — at most `batch` such
//!   replacements are in flight per app;
//! - an instance that cannot be relied upon (its node went offline or was
//!   deleted) is *lost*: it is dropped at once and a new one is created;
//! - the replica count is kept by creating or stopping instances.
//!
//! New instances are placed by `shellwego_core::sched`; those that fit
//! nowhere stay unplaced and the app is `pending` with the scheduler's
//! reason until a later pass (a node joining, capacity freed) places them.

use std::time::Duration;

use super::Controller;
use crate::bus::Topic;
use std::collections::{BTreeSet, HashMap};

use serde_json::json;
use shellwego_core::model::{AppStatus, DesiredState, DriverKind, InstanceStatus, NodeStatus};
use shellwego_core::sched::{Cluster, NodeState, Request, MAX_INSTANCES_PER_NODE};
use shellwego_core::Error;
use shellwego_store::apps::{self, App, Instance};
use shellwego_store::deployments::Deployment;
use shellwego_store::events::{self, Actor, NewEvent, Severity};
use shellwego_store::nodes::{self, NodeUse};
use shellwego_store::{commit, Tx};

use super::instances::{blank_instance, org_allowed_regions, stop_instance, CRASH_LOOP_RESTARTS};
use super::rollout::{self as deploy, Plan};
use crate::ctx::ServerCtx;

/// Reconcile one app in its own transaction.
pub async fn reconcile(ctx: &ServerCtx, app_id: &str) -> Result<(), Error> {
    let store = &ctx.store;
    let mut tx = store.begin().await?;
    reconcile_in(&mut tx, app_id).await?;
    commit(tx).await
}

/// Make the app's instances match its desired state, place what is
/// unplaced, and derive its status. Idempotent: a second call changes
/// nothing.
pub async fn reconcile_in(tx: &mut Tx, app_id: &str) -> Result<(), Error> {
    // A deployment that re-targets the app (a switch, a rollback) is acted
    // upon in the same transaction.
    for _ in 0..3 {
        if !reconcile_pass(tx, app_id).await? {
            break;
        }
    }
    Ok(())
}

/// What one pass works on: the app (locked for the transaction), its active
/// deployment and the plan it implies, the organization's nodes with the
/// room on each, and the app's instances. Each step below changes the
/// instances and writes what it changed.
struct Pass {
    app: App,
    dep: Option<Deployment>,
    rooms: Vec<NodeUse>,
    node_status: HashMap<String, NodeStatus>,
    now_us: i64,
    plan: Plan,
    insts: Vec<Instance>,
    /// Replicas wanted now (0 for a stopped app).
    wanted: i64,
}

/// Why instances are not placed yet: step 5's outcome, for the status.
struct Placement {
    /// No node has room (the scheduler's reason).
    unplaced: Option<String>,
    /// Room is coming: stopping instances will free it.
    room_coming: Option<String>,
    /// A surge replacement fell back to replacing in place this pass.
    fell_back: bool,
}

/// One pass; true when the app's deployment changed the app row.
async fn reconcile_pass(tx: &mut Tx, app_id: &str) -> Result<bool, Error> {
    let Some(app) = apps::get_for_update(tx, app_id).await? else {
        return Ok(false);
    };
    let dep = shellwego_store::deployments::active(tx, app_id).await?;
    let rooms = nodes::node_rooms(tx, &app.organization_id).await?;
    let node_status: HashMap<String, NodeStatus> = rooms
        .iter()
        .map(|u| (u.room.id.clone(), u.room.status))
        .collect();
    let now_us = shellwego_core::time::to_micros(shellwego_core::time::now());
    let plan = deploy::plan(dep.as_ref(), app.replicas, now_us);
    let insts: Vec<Instance> = apps::instances_of_app(tx, app_id).await?;
    let wanted = if app.desired_state == DesiredState::Running {
        app.replicas
    } else {
        0
    };
    let mut p = Pass {
        app,
        dep,
        rooms,
        node_status,
        now_us,
        plan,
        insts,
        wanted,
    };
    lose(tx, &mut p).await?;
    retire(tx, &mut p).await?;
    let to_create = scale(tx, &mut p).await?;
    replace(tx, &mut p, to_create).await?;
    let placement = place(tx, &mut p).await?;
    // 6. The deployment moves on from what is true now.
    if let Some(d) = p.dep.as_mut() {
        if deploy::advance(tx, &mut p.app, &p.insts, d).await? {
            apps::update(tx, &p.app).await?;
            return Ok(true);
        }
    }
    derive_status(tx, &mut p, placement).await?;
    Ok(false)
}

/// A running instance that must go while the app keeps serving: of an
/// older version, or on a draining node or one in maintenance.
fn is_retiring(node_status: &HashMap<String, NodeStatus>, version: i64, i: &Instance) -> bool {
    i.desired == DesiredState::Running
        && (i.version != version
            || i.node_id.as_ref().is_some_and(|n| {
                matches!(
                    node_status.get(n).copied(),
                    Some(NodeStatus::Draining) | Some(NodeStatus::Maintenance)
                )
            }))
}

/// Running instances that pass their health checks.
fn available(insts: &[Instance]) -> i64 {
    insts
        .iter()
        .filter(|i| i.desired == DesiredState::Running && i.status == InstanceStatus::Healthy)
        .count() as i64
}

/// Step 1: Lost instances (their node went offline or is gone) go, a drain past
/// its deadline stops what it has not moved, and a replacement whose
/// retiring instance is gone becomes a plain instance.
async fn lose(tx: &mut Tx, p: &mut Pass) -> Result<(), Error> {
    let Pass {
        app: a,
        insts,
        rooms,
        node_status,
        now_us,
        ..
    } = p;
    // 1. Lost: on a node that is offline or gone.
    for i in insts
        .iter_mut()
        .filter(|i| i.desired == DesiredState::Running)
    {
        let Some(n) = &i.node_id else { continue };
        let status = node_status.get(n).copied();
        if status.is_none() || status == Some(NodeStatus::Offline) {
            i.desired = DesiredState::Stopped;
            i.status = InstanceStatus::Lost;
            i.status_reason = Some(match status {
                None => "its node was removed".into(),
                Some(_) => format!("its node {n} went offline"),
            });
            // Nothing will confirm the stop; the row goes now (the agent
            // stops anything it is no longer told to run when it returns).
            apps::delete_instance(tx, &i.id).await?;
            events::record(
                tx,
                NewEvent::info("instance.lost", &Actor::system(), "app", &a.id)
                    .in_org(&a.organization_id)
                    .severity(Severity::Warning)
                    .meta(json!({"instance_id": i.id, "node_id": n, "reason": i.status_reason})),
            )
            .await?;
        }
    }
    // A drain past its deadline stops what it has not moved yet.
    for i in insts
        .iter_mut()
        .filter(|i| i.desired == DesiredState::Running)
    {
        let Some(n) = i.node_id.clone() else { continue };
        let overdue = rooms.iter().map(|u| &u.room).any(|r| {
            r.id == n
                && r.status == NodeStatus::Draining
                && r.drain_deadline.is_some_and(|d| d < *now_us)
        });
        if overdue {
            stop_instance(tx, i, "the node's drain timed out").await?;
        }
    }
    // A replacement whose retiring instance is gone is a plain instance now.
    let running_ids: BTreeSet<String> = insts
        .iter()
        .filter(|i| i.desired == DesiredState::Running)
        .map(|i| i.id.clone())
        .collect();
    for i in insts
        .iter_mut()
        .filter(|i| i.desired == DesiredState::Running)
    {
        if i.replaces
            .as_ref()
            .is_some_and(|r| !running_ids.contains(r))
        {
            i.replaces = None;
            apps::update_instance(tx, i).await?;
        }
    }
    Ok(())
}

/// Step 2: Healthy replacements retire what they replace.
async fn retire(tx: &mut Tx, p: &mut Pass) -> Result<(), Error> {
    let Pass { insts, plan, .. } = p;
    // 2. Replacements that are healthy retire what they replace (unless
    // the deployment holds the old set: blue-green until its switch and
    // warm window are over).
    let healthy_repl: Vec<(String, String)> = insts
        .iter()
        .filter(|i| {
            i.desired == DesiredState::Running
                && i.status == InstanceStatus::Healthy
                && !plan.hold_old
        })
        .filter_map(|i| i.replaces.clone().map(|r| (i.id.clone(), r)))
        .collect();
    for (new_id, old_id) in healthy_repl {
        if let Some(old) = insts.iter_mut().find(|i| i.id == old_id) {
            stop_instance(tx, old, "replaced by a healthy instance").await?;
        }
        if let Some(new) = insts.iter_mut().find(|i| i.id == new_id) {
            new.replaces = None;
            apps::update_instance(tx, new).await?;
        }
    }
    insts.retain(|i| i.desired == DesiredState::Running || i.node_id.is_some());
    Ok(())
}

/// Step 3: The replica count: how many instances to create (returned), and
/// the extra ones stopped.
async fn scale(tx: &mut Tx, p: &mut Pass) -> Result<i64, Error> {
    let Pass {
        app: a,
        insts,
        node_status,
        wanted,
        ..
    } = p;
    // 3. The replica count: slots are current instances plus retiring ones
    // (a retiring instance holds its slot until its replacement is healthy).
    let active: Vec<&Instance> = insts
        .iter()
        .filter(|i| i.desired == DesiredState::Running && i.replaces.is_none())
        .collect();
    let slots = active.len() as i64;
    let wanted = *wanted;
    let retiring = |i: &Instance| is_retiring(node_status, a.version, i);
    let mut to_create = 0;
    if slots < wanted {
        to_create = wanted - slots;
    } else if slots > wanted {
        // Stop the least useful first: retiring, unplaced, not healthy, newest.
        let mut order: Vec<(i32, i64, String)> = active
            .iter()
            .map(|i| {
                let rank = if retiring(i) {
                    0
                } else if i.node_id.is_none() {
                    1
                } else if i.status != InstanceStatus::Healthy {
                    2
                } else {
                    3
                };
                (rank, -i.created_at, i.id.clone())
            })
            .collect();
        order.sort();
        let extra: BTreeSet<String> = order
            .into_iter()
            .take((slots - wanted) as usize)
            .map(|(_, _, id)| id)
            .collect();
        for i in insts
            .iter_mut()
            .filter(|i| i.desired == DesiredState::Running)
        {
            let victim =
                extra.contains(&i.id) || i.replaces.as_ref().is_some_and(|r| extra.contains(r));
            if victim {
                stop_instance(tx, i, "scaled down").await?;
            }
        }
        insts.retain(|i| i.desired == DesiredState::Running || i.node_id.is_some());
    }
    Ok(to_create)
}

/// Step 4: Replacements for retiring instances (surge, drain batch or in
/// place), and the `to_create` new instances.
async fn replace(tx: &mut Tx, p: &mut Pass, to_create: i64) -> Result<(), Error> {
    let Pass {
        app: a,
        insts,
        rooms,
        node_status,
        plan,
        wanted,
        ..
    } = p;
    // 4. Retiring instances get replacements. A replacement starts next
    // to what it replaces (a surge instance: `plan.surge` of the app's in
    // flight at a time, or, for instances on a draining node, the drain's
    // batch across every app on that node) or, once the surge is spent and
    // the plan allows it, in place: what it replaces stops first, while at
    // most `plan.unavailable` instances are down (one not healthy is down
    // already and may go at any time).
    let in_flight = insts
        .iter()
        .filter(|i| {
            i.desired == DesiredState::Running
                && i.replaces.is_some()
                && i.status != InstanceStatus::Healthy
        })
        .count() as i64;
    let mut surge_budget = plan.surge.saturating_sub(in_flight).max(0);
    let wanted = *wanted;
    let target_version = a.version;
    let retiring = |i: &Instance| is_retiring(node_status, a.version, i);
    let mut down_budget = plan.unavailable - (wanted - available(insts)).max(0);
    let mut node_budget: HashMap<String, i64> = HashMap::new();
    let replaced: BTreeSet<String> = insts.iter().filter_map(|i| i.replaces.clone()).collect();
    let needing: Vec<(String, Option<(String, i64)>)> = insts
        .iter()
        .filter(|i| retiring(i) && !replaced.contains(&i.id))
        .map(|i| {
            let drain = i.node_id.as_ref().and_then(|n| {
                rooms
                    .iter()
                    .map(|u| &u.room)
                    .find(|r| &r.id == n && r.status == NodeStatus::Draining)
                    .map(|r| (r.id.clone(), r.drain_batch.unwrap_or(1).max(1)))
            });
            (i.id.clone(), drain)
        })
        .collect();
    // A canary step caps the new version's instances.
    let mut new_room = plan.max_new.map(|m| {
        m - insts
            .iter()
            .filter(|i| i.desired == DesiredState::Running && i.version == target_version)
            .count() as i64
    });
    let mut new_instances: Vec<Instance> = vec![];
    for (old, drain) in needing {
        if new_room.is_some_and(|r| r <= 0) {
            break;
        }
        match &drain {
            Some((node, node_batch)) => {
                if !node_budget.contains_key(node) {
                    let moving = nodes::drain_in_flight(tx, node).await?;
                    node_budget.insert(node.clone(), node_batch - moving);
                }
                let Some(budget) = node_budget.get_mut(node).filter(|b| **b > 0) else {
                    continue;
                };
                *budget -= 1;
                new_instances.push(Instance {
                    replaces: Some(old),
                    ..blank_instance(a)
                });
            }
            None if surge_budget > 0 => {
                surge_budget -= 1;
                new_instances.push(Instance {
                    replaces: Some(old),
                    ..blank_instance(a)
                });
            }
            None if plan.in_place => {
                let Some(o) = insts.iter_mut().find(|i| i.id == old) else {
                    continue;
                };
                let down = o.status != InstanceStatus::Healthy;
                if !down && down_budget <= 0 {
                    continue;
                }
                if !down {
                    down_budget -= 1;
                }
                stop_instance(tx, o, "replaced in place").await?;
                new_instances.push(blank_instance(a));
            }
            None => continue,
        }
        if let Some(r) = new_room.as_mut() {
            *r -= 1;
        }
    }
    for _ in 0..to_create {
        new_instances.push(blank_instance(a));
    }
    for i in new_instances {
        insts.push(apps::insert_instance(tx, i).await?);
    }
    Ok(())
}

/// Step 5: Placement of what is unplaced, falling back to replacing in place
/// when a surge instance fits nowhere.
async fn place(tx: &mut Tx, p: &mut Pass) -> Result<Placement, Error> {
    let Pass {
        app: a,
        dep,
        insts,
        rooms,
        node_status,
        plan,
        wanted,
        ..
    } = p;
    // 5. Place what is unplaced. A stopping instance holds its room until
    // its agent reports it gone.
    let wanted = *wanted;
    let target_version = a.version;
    let org = shellwego_store::orgs::org_settings(tx, &a.organization_id).await?;
    let spec = &a.spec;
    let mut nodes_idx: Vec<String> = vec![];
    let mut cluster = Cluster::new(
        rooms
            .iter()
            .map(|u| {
                let (n, used_mem, used_cpu, used_slots) =
                    (&u.room, u.memory, u.cpu_millis, u.instances);
                nodes_idx.push(n.id.clone());
                NodeState {
                    id: n.id.clone(),
                    ready: n.status == NodeStatus::Ready,
                    region: n.region.clone(),
                    zone: n.zone.clone(),
                    drivers: n.drivers.clone(),
                    labels: n.labels.clone(),
                    free_cpu_millis: n.cpu_millis - used_cpu,
                    free_memory: n.memory - used_mem,
                    free_slots: MAX_INSTANCES_PER_NODE - used_slots,
                }
            })
            .collect(),
    );
    for i in insts.iter().filter(|i| i.desired == DesiredState::Running) {
        if let Some(idx) = i
            .node_id
            .as_ref()
            .and_then(|n| nodes_idx.iter().position(|x| x == n))
        {
            cluster.count_existing(&a.id, idx);
        }
    }
    // The room there will be once the app's stopping instances are gone.
    let mut after_stops = cluster.clone();
    for i in insts.iter().filter(|i| i.desired != DesiredState::Running) {
        if let Some(idx) = i
            .node_id
            .as_ref()
            .and_then(|n| nodes_idx.iter().position(|x| x == n))
        {
            after_stops.free(idx, i.memory, i.cpu_millis);
        }
    }
    let req = Request {
        app_id: a.id.clone(),
        memory: a.memory,
        cpu_millis: a.cpu_millis,
        driver: spec.runtime.map(|d| d.to_string()),
        region: spec.placement.region.clone(),
        labels: spec.placement.labels.clone(),
        allowed_regions: org_allowed_regions(&org),
        image: spec.image.is_some(),
    };
    let mut unplaced_reason: Option<String> = None;
    // An instance that has no room yet but will have once stopping
    // instances are gone (replacing in place, or waiting for a stop).
    let mut room_coming: Option<String> = None;
    let mut fell_back = false;
    let mut in_place_down = plan.in_place_unavailable() - (wanted - available(insts)).max(0);
    let mut touched = BTreeSet::new();
    // Where the instance a replacement replaces lives, if it is draining
    // to chosen destinations.
    let destinations_of = |old: &Option<String>, insts: &[Instance]| -> Vec<String> {
        old.as_ref()
            .and_then(|o| insts.iter().find(|i| &i.id == o))
            .and_then(|o| o.node_id.as_ref())
            .and_then(|n| {
                rooms
                    .iter()
                    .map(|u| &u.room)
                    .find(|r| &r.id == n && r.status == NodeStatus::Draining)
            })
            .map(|r| r.drain_destinations.clone())
            .unwrap_or_default()
    };
    for k in 0..insts.len() {
        if !(insts[k].desired == DesiredState::Running && insts[k].node_id.is_none()) {
            continue;
        }
        let dest = destinations_of(&insts[k].replaces, insts);
        let placed = if dest.is_empty() {
            cluster.place(&req)
        } else {
            cluster.place_within(&req, &dest)
        };
        let mut coming = false;
        if placed.is_err() {
            // No room for a surge replacement: replace in place if what it
            // replaces is retiring for a new version on a ready node, its
            // room would take the replacement, and no more than allowed
            // are down. The replacement is placed once it has stopped.
            let old = insts[k]
                .replaces
                .as_ref()
                .filter(|_| plan.in_place && dest.is_empty())
                .and_then(|r| {
                    insts
                        .iter()
                        .position(|i| &i.id == r && i.desired == DesiredState::Running)
                })
                .filter(|&o| insts[o].version != target_version)
                .and_then(|o| {
                    let n = insts[o].node_id.as_ref()?;
                    let idx = nodes_idx.iter().position(|x| x == n)?;
                    (node_status.get(n).copied() == Some(NodeStatus::Ready)).then_some((o, idx))
                });
            if let Some((o, idx)) = old {
                let mut trial = after_stops.clone();
                trial.release(&a.id, idx, insts[o].memory, insts[o].cpu_millis);
                if trial.place(&req).is_ok() {
                    coming = true;
                    let down = insts[o].status != InstanceStatus::Healthy;
                    if down || in_place_down > 0 {
                        if !down {
                            in_place_down -= 1;
                        }
                        stop_instance(
                            tx,
                            &mut insts[o],
                            "replaced in place: no room for a surge instance",
                        )
                        .await?;
                        after_stops = trial;
                        insts[k].replaces = None;
                        apps::update_instance(tx, &insts[k]).await?;
                        fell_back = true;
                    }
                }
            } else if after_stops.clone().place(&req).is_ok() {
                coming = true;
            }
        } else {
            let _ = after_stops.place(&req);
        }
        let i = &mut insts[k];
        match placed {
            Ok(pl) => {
                let node = nodes_idx[pl.node].clone();
                i.node_id = Some(node.clone());
                i.driver = Some(pl.driver.parse::<DriverKind>().map_err(Error::internal)?);
                i.status = InstanceStatus::Pending;
                i.status_reason = None;
                apps::update_instance(tx, i).await?;
                touched.insert(node);
            }
            Err(why) => {
                if i.status_reason.as_deref() != Some(why.as_str()) {
                    i.status_reason = Some(why.clone());
                    apps::update_instance(tx, i).await?;
                }
                if coming {
                    room_coming = Some(why);
                } else {
                    unplaced_reason = Some(why);
                }
            }
        }
    }
    for n in &touched {
        nodes::bump_node(tx, n).await?;
    }
    // No node at all, but some registered: they are about to join (the
    // local agent of `shellwego up` joins its own within seconds).
    if unplaced_reason.is_some() && rooms.is_empty() {
        let joining = nodes::joining_nodes(tx, &a.organization_id).await?;
        if joining > 0 {
            unplaced_reason = Some(format!(
                "no node has joined this organization yet; {joining} registered node(s) wait for their agent to join"
            ));
        }
    }
    if let Some(d) = dep.as_mut().filter(|_| fell_back) {
        if !d.options.in_place {
            d.options.in_place = true;
            shellwego_store::deployments::update(tx, d).await?;
            let n = plan.in_place_unavailable();
            shellwego_store::deployments::log(tx, &d.id, &deploy::in_place_reason(n, None)).await?;
            events::record(
                tx,
                NewEvent::info("deployment.in_place", &Actor::system(), "app", &a.id)
                    .in_org(&a.organization_id)
                    .severity(Severity::Warning)
                    .meta(json!({"deployment_id": d.id, "max_unavailable": n, "reason": "no node has room for a surge instance"})),
            )
            .await?;
        }
    }
    Ok(Placement {
        unplaced: unplaced_reason,
        room_coming,
        fell_back,
    })
}

/// Step 7: The app's status and reason, from what agents report.
async fn derive_status(tx: &mut Tx, p: &mut Pass, placement: Placement) -> Result<(), Error> {
    let Pass {
        app: a,
        dep,
        insts,
        node_status,
        plan,
        wanted,
        ..
    } = p;
    // 7. Status, from what agents report.
    let wanted = *wanted;
    let retiring = |i: &Instance| is_retiring(node_status, a.version, i);
    let Placement {
        unplaced: unplaced_reason,
        room_coming,
        fell_back,
    } = placement;
    let current: Vec<&Instance> = insts
        .iter()
        .filter(|i| i.desired == DesiredState::Running)
        .collect();
    let healthy = current
        .iter()
        .filter(|i| i.status == InstanceStatus::Healthy && !retiring(i))
        .count() as i64;
    let crashing = current.iter().find(|i| {
        matches!(i.status, InstanceStatus::Crashed | InstanceStatus::Failed)
            && (i.restarts >= CRASH_LOOP_RESTARTS || i.status == InstanceStatus::Failed)
    });
    let stopping = insts
        .iter()
        .filter(|i| i.desired == DesiredState::Stopped)
        .count();
    let any_retiring = current.iter().any(|i| retiring(i));
    let (status, reason): (AppStatus, Option<String>) = if let Some(why) = unplaced_reason {
        (AppStatus::Pending, Some(why))
    } else if let Some(why) = room_coming {
        let in_place = fell_back || dep.as_ref().is_some_and(|d| d.options.in_place);
        (
            AppStatus::Deploying,
            Some(if in_place {
                deploy::in_place_reason(plan.in_place_unavailable(), Some(&why))
            } else {
                format!("waiting for stopping instances to free their room ({why})")
            }),
        )
    } else if wanted == 0 {
        if stopping > 0 || !current.is_empty() {
            (
                AppStatus::Deploying,
                Some(format!("stopping {} instance(s)", stopping + current.len())),
            )
        } else {
            (AppStatus::Stopped, None)
        }
    } else if let Some(c) = crashing.filter(|_| healthy < wanted) {
        (
            AppStatus::Error,
            Some(format!(
                "instance {} is crash-looping ({} restarts): {}",
                c.id,
                c.restarts,
                c.status_reason
                    .clone()
                    .unwrap_or_else(|| "it keeps exiting".into())
            )),
        )
    } else if healthy >= wanted && !any_retiring {
        (AppStatus::Running, None)
    } else {
        (AppStatus::Deploying, None)
    };
    if status != a.status || reason != a.status_reason {
        apps::set_status(tx, &a.id, status, reason.as_deref()).await?;
        let mut e = None;
        if status == AppStatus::Pending && a.status != AppStatus::Pending {
            e = Some(
                NewEvent::info("app.unschedulable", &Actor::system(), "app", &a.id)
                    .severity(Severity::Warning),
            );
        } else if status == AppStatus::Running && a.status != AppStatus::Running {
            e = Some(NewEvent::info(
                "app.running",
                &Actor::system(),
                "app",
                &a.id,
            ));
        } else if status == AppStatus::Error && a.status != AppStatus::Error {
            e = Some(
                NewEvent::info("app.error", &Actor::system(), "app", &a.id)
                    .severity(Severity::Error),
            );
        }
        if let Some(e) = e {
            /// What an app's status event says of its instances.
            #[derive(serde::Serialize)]
            struct Meta<'a> {
                reason: Option<&'a str>,
                /// Instances passing their checks.
                healthy: i64,
                desired: i64,
            }
            let meta = Meta {
                reason: reason.as_deref(),
                healthy,
                desired: wanted,
            };
            events::record(
                tx,
                e.in_org(&a.organization_id)
                    .meta(serde_json::to_value(meta).map_err(Error::internal)?),
            )
            .await?;
        }
    }
    Ok(())
}

const PASS_EVERY: Duration = Duration::from_secs(2);
/// Every this many passes, every app is reconciled, not only those the
/// store says need it.
const FULL_PASS_EVERY: u32 = 15;

#[derive(Default)]
pub struct Reconcile {
    passes: u32,
}

impl Controller for Reconcile {
    const NAME: &'static str = "reconcile";

    fn wakes_on(&self) -> &'static [Topic] {
        &[Topic::Apps]
    }

    fn every(&self, _: &ServerCtx) -> Duration {
        PASS_EVERY
    }

    async fn pass(&mut self, ctx: &ServerCtx) -> Result<&'static [Topic], Error> {
        self.passes = self.passes.wrapping_add(1);
        let ids = if self.passes.is_multiple_of(FULL_PASS_EVERY) {
            apps::ids(&mut *ctx.store.conn().await?).await?
        } else {
            apps::needing_reconcile(&mut *ctx.store.conn().await?).await?
        };
        let mut any = false;
        for id in ids {
            match reconcile(ctx, &id).await {
                Ok(()) => any = true,
                Err(e) => tracing::warn!(app_id = %id, error = %e, "reconcile failed"),
            }
        }
        // Wake syncs and routers (not this controller itself).
        Ok(if any {
            &[Topic::Nodes, Topic::Routes]
        } else {
            &[]
        })
    }
}

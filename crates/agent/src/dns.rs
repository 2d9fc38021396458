//! Internal DNS: an instance finds the other apps of its organization by
//! name, `<app>.internal` (and one instance by `<instance_id>.<app>.internal`).
//!
//! Each container gets a resolver of its own: `hickory-server` on UDP and
//! TCP port 53 of the host end of the container's veth (the address its
//! `/etc/resolv.conf` names), so whoever asks is known by the socket the
//! question came in on — never by an address a container could forge. A
//! name is answered from the control plane (`POST /v1/agent/resolve`: the
//! healthy instances of that app in the node's organization), kept for the
//! answer's TTL (2 s). `A` records carry the instances' addresses (the ones
//! the routers use), `SRV` records their ports (`$PORT` differs per
//! instance), with the targets' `A` records beside them. A name outside
//! `.internal` is REFUSED (the container has no other resolver: its
//! connections beyond the node go by address); a name of no app is
//! NXDOMAIN. Process instances share the node's resolver configuration and
//! get no internal DNS (their socket would not tell who asks).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::proto::op::{Header, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;
use shellwego_api::agent::{ResolveAnswer, ResolveRequest};
use tokio_util::sync::CancellationToken;

/// Asks the control plane what a name stands for.
pub type LookupFn = Arc<
    dyn Fn(ResolveRequest) -> Pin<Box<dyn Future<Output = anyhow::Result<ResolveAnswer>> + Send>>
        + Send
        + Sync,
>;

/// An answer and until when it may be used.
type Cached = (Instant, Arc<ResolveAnswer>);

/// The suffix every internal name ends with (lowercase, fully qualified).
const SUFFIX: &str = ".internal.";
/// A TCP question must arrive within this.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);

/// The node's internal resolvers, one per container.
pub struct InternalDns {
    shared: Arc<Shared>,
    rt: tokio::runtime::Handle,
}

struct Shared {
    lookup: RwLock<Option<LookupFn>>,
    /// (asking instance, name) → (good until, answer).
    cache: Mutex<HashMap<(String, String), Cached>>,
    servers: Mutex<HashMap<String, CancellationToken>>,
}

impl std::fmt::Debug for InternalDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalDns").finish_non_exhaustive()
    }
}

impl InternalDns {
    /// Resolvers spawned on the current Tokio runtime; questions fail
    /// (SERVFAIL) until [`Self::set_lookup`].
    pub fn new() -> anyhow::Result<InternalDns> {
        Ok(InternalDns {
            shared: Arc::new(Shared {
                lookup: RwLock::new(None),
                cache: Mutex::new(HashMap::new()),
                servers: Mutex::new(HashMap::new()),
            }),
            rt: tokio::runtime::Handle::try_current()
                .context("the internal DNS needs a Tokio runtime")?,
        })
    }

    /// Where answers come from (the agent sets it once it has joined).
    pub fn set_lookup(&self, lookup: LookupFn) {
        if let Ok(mut l) = self.shared.lookup.write() {
            *l = Some(lookup);
        }
    }

    /// Answer `instance_id`'s questions on `ip`, port 53 (UDP and TCP): the
    /// sockets are bound when this returns, so the instance may ask at once.
    pub fn serve(&self, instance_id: &str, ip: IpAddr) -> anyhow::Result<()> {
        self.stop(instance_id);
        let udp = std::net::UdpSocket::bind((ip, 53))
            .with_context(|| format!("cannot bind the internal DNS to {ip}:53/udp"))?;
        udp.set_nonblocking(true)?;
        let tcp = std::net::TcpListener::bind((ip, 53))
            .with_context(|| format!("cannot bind the internal DNS to {ip}:53/tcp"))?;
        tcp.set_nonblocking(true)?;
        let _entered = self.rt.enter();
        let mut server = ServerFuture::new(Handler {
            instance_id: instance_id.to_string(),
            shared: self.shared.clone(),
        });
        server.register_socket_std(udp)?;
        server.register_listener_std(tcp, TCP_TIMEOUT)?;
        let token = server.shutdown_token().clone();
        self.rt.spawn(async move {
            if let Err(e) = server.block_until_done().await {
                tracing::debug!(error = %e, "an internal DNS server ended");
            }
        });
        if let Ok(mut s) = self.shared.servers.lock() {
            s.insert(instance_id.to_string(), token);
        }
        Ok(())
    }

    /// Stop answering for `instance_id` (its sockets close).
    pub fn stop(&self, instance_id: &str) {
        let token = self
            .shared
            .servers
            .lock()
            .ok()
            .and_then(|mut s| s.remove(instance_id));
        if let Some(t) = token {
            t.cancel();
        }
    }
}

impl Shared {
    /// The answer for `name` asked by `instance_id`, from the cache while
    /// its TTL runs.
    async fn answer(&self, instance_id: &str, name: &str) -> anyhow::Result<Arc<ResolveAnswer>> {
        let key = (instance_id.to_string(), name.to_string());
        if let Some((until, a)) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            if Instant::now() < until {
                return Ok(a);
            }
        }
        let lookup = self
            .lookup
            .read()
            .ok()
            .and_then(|l| l.clone())
            .context("not joined to a control plane yet")?;
        let a = Arc::new(
            lookup(ResolveRequest {
                instance_id: instance_id.to_string(),
                name: name.to_string(),
            })
            .await?,
        );
        if let Ok(mut c) = self.cache.lock() {
            let now = Instant::now();
            c.retain(|_, (until, _)| *until > now);
            c.insert(
                key,
                (now + Duration::from_secs(u64::from(a.ttl_secs)), a.clone()),
            );
        }
        Ok(a)
    }
}

struct Handler {
    instance_id: String,
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut header = Header::response_from_request(request.header());
        header.set_authoritative(true);
        let (code, answers, extra) = self.records(request).await;
        header.set_response_code(code);
        let msg = builder.build(header, answers.iter(), [], [], extra.iter());
        match response.send_response(msg).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "cannot send an internal DNS answer");
                let mut h = Header::response_from_request(request.header());
                h.set_response_code(ResponseCode::ServFail);
                h.into()
            }
        }
    }
}

impl Handler {
    /// (response code, answers, additional records).
    async fn records(&self, request: &Request) -> (ResponseCode, Vec<Record>, Vec<Record>) {
        let none = |c| (c, vec![], vec![]);
        if request.op_code() != OpCode::Query {
            return none(ResponseCode::NotImp);
        }
        let Ok(info) = request.request_info() else {
            return none(ResponseCode::FormErr);
        };
        let qname = Name::from(info.query.name().clone());
        let name = qname.to_ascii().to_ascii_lowercase();
        if !name.ends_with(SUFFIX) {
            return none(ResponseCode::Refused);
        }
        let a = match self.shared.answer(&self.instance_id, &name).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(instance_id = %self.instance_id, %name, error = %format!("{e:#}"), "internal DNS: cannot ask the control plane");
                return none(ResponseCode::ServFail);
            }
        };
        if a.records.is_empty() {
            return none(ResponseCode::NXDomain);
        }
        let ttl = a.ttl_secs;
        let a_of = |owner: &Name, ip: &str| -> Option<Record> {
            match ip.parse::<IpAddr>().ok()? {
                IpAddr::V4(v4) => Some(Record::from_rdata(owner.clone(), ttl, RData::A(A(v4)))),
                IpAddr::V6(_) => None,
            }
        };
        match info.query.query_type() {
            RecordType::A => {
                let mut seen = std::collections::HashSet::new();
                let answers = a
                    .records
                    .iter()
                    .filter(|r| seen.insert(r.ip.clone()))
                    .filter_map(|r| a_of(&qname, &r.ip))
                    .collect();
                (ResponseCode::NoError, answers, vec![])
            }
            RecordType::SRV => {
                let (mut answers, mut extra) = (vec![], vec![]);
                for r in &a.records {
                    let Ok(target) = Name::from_ascii(format!(
                        "{}.{}",
                        r.instance_id.to_ascii_lowercase(),
                        name
                    )) else {
                        continue;
                    };
                    answers.push(Record::from_rdata(
                        qname.clone(),
                        ttl,
                        RData::SRV(SRV::new(0, 10, r.port, target.clone())),
                    ));
                    extra.extend(a_of(&target, &r.ip));
                }
                (ResponseCode::NoError, answers, extra)
            }
            // The name exists; it has no records of this type.
            _ => none(ResponseCode::NoError),
        }
    }
}

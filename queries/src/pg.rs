//! The Postgres wire protocol (psql, Grafana, any Postgres driver) over the same tables,
//! functions and limits as HTTP: datafusion-postgres parses and plans, with pg_catalog for
//! clients' catalog queries; Vigil adds SCRAM-SHA-256 users, TLS that must load, and the query
//! limits around every statement.

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion_postgres::pgwire;
use datafusion_postgres::DfSessionService;
use futures::{stream, Sink, Stream, StreamExt};
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramAuth};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::{AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler};
use pgwire::api::portal::Portal;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::Response;
use pgwire::messages::data::DataRow;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use crate::{Admission, Error, ErrorKind, SqlService};

/// SCRAM iterations of the stored passwords (the RFC's minimum, Postgres' default).
const ITERATIONS: usize = 4096;

/// Errors of the Postgres listener.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// Occurs when the TLS certificate or key cannot be loaded: Vigil does not fall back to
    /// plaintext.
    #[error("config keys `server.tls_cert`/`server.tls_key`: {0}; fix the PEM files or remove both keys")]
    Tls(String),
}

/// Loads a TLS acceptor from PEM files (certificate chain, PKCS#8 or RSA key); any failure is
/// an error.
pub fn load_tls(cert: &Path, key: &Path) -> Result<TlsAcceptor, PgError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |p: &Path| std::fs::read(p).map_err(|e| PgError::Tls(format!("cannot read {}: {e}", p.display())));
    let certs = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PgError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(PgError::Tls(format!("{} holds no PEM certificate", cert.display())));
    }
    let key = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .map_err(|e| PgError::Tls(format!("{}: {e}", key.display())))?
        .ok_or_else(|| PgError::Tls(format!("{} holds no PEM private key", key.display())))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| PgError::Tls(format!("certificate and key do not form a TLS identity: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Users and their salted passwords.
#[derive(Debug)]
struct Users {
    salt: Vec<u8>,
    salted: HashMap<String, Vec<u8>>,
}

#[async_trait]
impl AuthSource for Users {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default();
        match self.salted.get(user) {
            Some(p) => Ok(Password::new(Some(self.salt.clone()), p.clone())),
            None => Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "28P01".into(),
                format!("password authentication failed for user \"{user}\""),
            )))),
        }
    }
}

/// The Postgres server: its handlers per connection.
#[derive(Debug)]
pub struct PgServer {
    sql: SqlService,
    users: Option<Arc<Users>>,
}

impl PgServer {
    /// A server over `sql`; with `users` (name, password) every connection must authenticate
    /// with SCRAM-SHA-256, without them none does.
    pub fn new(sql: SqlService, users: &[(String, String)]) -> Self {
        let users = (!users.is_empty()).then(|| {
            let salt: Vec<u8> = (0..16u8).map(rand_byte).collect();
            let salted = users.iter().map(|(u, p)| (u.clone(), gen_salted_password(p, &salt, ITERATIONS))).collect();
            Arc::new(Users { salt, salted })
        });
        Self { sql, users }
    }

    /// Accepts connections on `listener` until `shutdown` resolves.
    pub async fn serve(self, listener: TcpListener, tls: Option<TlsAcceptor>, shutdown: impl std::future::Future<Output = ()> + Send) {
        let me = Arc::new(self);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                accepted = listener.accept() => match accepted {
                    Ok((socket, peer)) => {
                        let (h, tls) = (me.clone(), tls.clone());
                        tokio::spawn(async move {
                            if let Err(e) = pgwire::tokio::process_socket(socket, tls, h).await {
                                tracing::debug!(%peer, error = %e, "Postgres connection ended with an error");
                            }
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "Postgres listener could not accept a connection"),
                },
            }
        }
    }
}

/// A salt byte: the process's randomly keyed hasher over the clock and `i` (a salt must be
/// unique, not secret).
fn rand_byte(i: u8) -> u8 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.write_u8(i);
    (h.finish() >> 24) as u8
}

/// Startup: SCRAM when users are configured, else open.
enum Startup {
    Open(Open),
    Scram(Box<SASLAuthStartupHandler<DefaultServerParameterProvider>>),
}

struct Open;

impl NoopStartupHandler for Open {}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match self {
            Self::Open(h) => h.on_startup(client, message).await,
            Self::Scram(h) => h.on_startup(client, message).await,
        }
    }
}

impl PgWireServerHandlers for PgServer {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::new(Limited::new(&self.sql))
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::new(Limited::new(&self.sql))
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(match &self.users {
            None => Startup::Open(Open),
            Some(users) => {
                let mut scram = ScramAuth::new(users.clone());
                scram.set_iterations(ITERATIONS);
                Startup::Scram(Box::new(SASLAuthStartupHandler::new(Arc::new(DefaultServerParameterProvider::default())).with_scram(scram)))
            }
        })
    }
}

/// datafusion-postgres' handlers in a session of one connection (its own memory pool), each
/// statement within the query limits: a slot, the time limit and the row limit, until its last
/// row is sent.
struct Limited {
    inner: DfSessionService,
    sql: SqlService,
}

impl Limited {
    fn new(sql: &SqlService) -> Self {
        Self { inner: DfSessionService::new(Arc::new(sql.session())), sql: sql.clone() }
    }

    async fn admit(&self) -> PgWireResult<Arc<Admission>> {
        self.sql.admit().await.map(Arc::new).map_err(|e| user_error(&e))
    }

    fn timeout(&self) -> PgWireError {
        user_error(&Error::Timeout(self.sql.limits().timeout))
    }

    /// Holds the slot until the rows are sent, and applies the deadline and row limit to them.
    fn limit(&self, response: Response, admission: &Arc<Admission>) -> Response {
        let Response::Query(mut q) = response else { return response };
        let rows = std::mem::replace(&mut q.data_rows, Box::pin(stream::empty()));
        q.data_rows = Box::pin(limited_rows(rows, admission.clone(), self.sql.limits()));
        Response::Query(q)
    }
}

fn limited_rows(
    rows: impl Stream<Item = PgWireResult<DataRow>> + Send + Unpin + 'static,
    admission: Arc<Admission>,
    limits: crate::Limits,
) -> impl Stream<Item = PgWireResult<DataRow>> + Send {
    stream::unfold((rows, admission, 0usize, false), move |(mut rows, admission, n, done)| async move {
        if done {
            return None;
        }
        let next = match tokio::time::timeout_at(admission.deadline, rows.next()).await {
            Err(_) => Some(Err(user_error(&Error::Timeout(limits.timeout)))),
            Ok(None) => return None,
            Ok(Some(Ok(_))) if n >= limits.max_rows => Some(Err(user_error(&Error::TooManyRows(limits.max_rows)))),
            Ok(Some(Err(e))) => Some(Err(classify_pg(e))),
            Ok(Some(Ok(row))) => Some(Ok(row)),
        };
        let stop = !matches!(next, Some(Ok(_)));
        next.map(|item| (item, (rows, admission, n + 1, stop)))
    })
}

/// A Postgres error for a Vigil query error, with the kind's SQLSTATE.
fn user_error(e: &Error) -> PgWireError {
    pg_error(e.kind(), e.to_string())
}

fn pg_error(kind: ErrorKind, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), kind.sqlstate().into(), message)))
}

/// DataFusion's errors get the SQLSTATE of their kind (a parse error 42601, an unknown column
/// 42P01, memory 53000), not datafusion-postgres' catch-all XX000.
fn classify_pg(e: PgWireError) -> PgWireError {
    if let PgWireError::ApiError(inner) = &e {
        if let Some(df) = inner.downcast_ref::<datafusion::error::DataFusionError>() {
            let kind = crate::classify(df);
            let hint = if kind == ErrorKind::Resources { " (server.limits.memory_mb)" } else { "" };
            return pg_error(kind, format!("{df}{hint}"));
        }
    }
    e
}

#[async_trait]
impl SimpleQueryHandler for Limited {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let admission = self.admit().await?;
        let responses = match tokio::time::timeout_at(admission.deadline, SimpleQueryHandler::do_query(&self.inner, client, query)).await {
            Ok(r) => r.map_err(classify_pg)?,
            Err(_) => return Err(self.timeout()),
        };
        Ok(responses.into_iter().map(|r| self.limit(r, &admission)).collect())
    }
}

#[async_trait]
impl ExtendedQueryHandler for Limited {
    type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;
    type QueryParser = <DfSessionService as ExtendedQueryHandler>::QueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.inner.query_parser()
    }

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<Self::Statement>, max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let admission = self.admit().await?;
        let response = match tokio::time::timeout_at(admission.deadline, ExtendedQueryHandler::do_query(&self.inner, client, portal, max_rows)).await {
            Ok(r) => r.map_err(classify_pg)?,
            Err(_) => return Err(self.timeout()),
        };
        Ok(self.limit(response, &admission))
    }
}

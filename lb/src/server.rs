//! Starting and stopping the LB, the top of its layers: [`Lb::start`] builds the first snapshot, binds every
//! listener and the admin server (each bound socket logs `event="listening"`), starts the controller
//! ([`crate::control`]: reloads, health checks, discovery) and hands the rest of the LB's life to
//! [`crate::drain`], which waits for the shutdown token (or `POST /drain`) and runs the three drain phases.
//! [`run`] is what `fleetgate lb --config <path>` calls.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};

use fleetgate_config::lb::LbConfig;
use fleetgate_ops::admin::{AdminSockets, AdminState};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin_routes::LbRoutes;
use crate::control::{Controller, DISCOVERY_STARTUP_WAIT};
use crate::drain::{self, Service, Tasks};
use crate::error::LbError;
use crate::listener::{self, Bound};
use crate::metrics::{BACKENDS, DRAINING, SNAPSHOT_GENERATION};
use crate::reload;
use crate::shared::{COMMAND_QUEUE, Shared};
use crate::snapshot::{STATIC_SOURCE, Snapshot};

/// The load balancer.
#[derive(Debug)]
pub struct Lb;

/// What [`Lb::start_with`] needs besides the shutdown token.
#[derive(Debug)]
pub struct LbOptions {
    /// The config file (re-read on reloads, watched); `None` = reloads are refused.
    pub path: Option<PathBuf>,
    /// The validated config (its `[discovery]` table included).
    pub config: LbConfig,
    /// SIGHUP notifications.
    pub sighup: Option<mpsc::Receiver<()>>,
}

/// A running LB: its bound addresses and its completion.
#[derive(Debug)]
pub struct LbHandle {
    admin: Option<SocketAddr>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl LbHandle {
    /// Bound address of every listener in force, in config order, with its name.
    pub fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.shared
            .bound
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Bound address of the listener called `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listener_addrs()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
    }

    /// Bound address of the admin server, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Relays open now (connections routed to a backend and not yet closed).
    pub fn open_relays(&self) -> usize {
        self.shared.registry.len()
    }

    /// Reloads the config file now (what SIGHUP and `POST /reload` do).
    pub async fn reload(&self) -> Result<u64, String> {
        self.shared.reload().await
    }

    /// Starts the drain (what SIGTERM and `POST /drain` do).
    pub fn drain(&self) {
        self.shared.drain_requested.cancel();
    }

    /// Whether the LB has finished.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits until the LB has shut down (after its shutdown token is cancelled or a drain).
    pub async fn wait(self) -> Result<(), LbError> {
        self.task.await.map_err(|e| LbError::Task(e.to_string()))
    }
}

impl Lb {
    /// Builds the snapshot (loading certificates), binds every socket and serves `config` until `shutdown`;
    /// without a file, reloads are refused (discovery, health checks and drains work as usual).
    pub async fn start(config: LbConfig, shutdown: CancellationToken) -> Result<LbHandle, LbError> {
        let options = LbOptions {
            path: None,
            config,
            sighup: None,
        };
        Self::start_with(options, shutdown).await
    }

    /// Loads `path` and serves it, reloading on file changes, on `sighup` and on `POST /reload`.
    pub async fn start_file(
        path: &Path,
        sighup: Option<mpsc::Receiver<()>>,
        shutdown: CancellationToken,
    ) -> Result<LbHandle, LbError> {
        let options = LbOptions {
            path: Some(path.to_path_buf()),
            config: LbConfig::load(path)?,
            sighup,
        };
        Self::start_with(options, shutdown).await
    }

    /// Starts from `options`, step by step: shared state, first snapshot (after the first discovered set),
    /// listener sockets, admin socket, the controller's accept loops and health checks, the admin server; then
    /// ready, and the drain waits for `shutdown`.
    pub async fn start_with(
        options: LbOptions,
        shutdown: CancellationToken,
    ) -> Result<LbHandle, LbError> {
        install_crypto_provider();
        let LbOptions {
            path,
            config,
            sighup,
        } = options;
        let tasks = Tasks::default();
        let (control_tx, control_rx) = mpsc::channel(COMMAND_QUEUE);
        // The first snapshot needs the first discovered set: a placeholder until the controller exists.
        let placeholder = Snapshot::build(config.clone(), &[], STATIC_SOURCE, None)?;
        let shared = Shared::new(placeholder, control_tx);
        let mut controller = Controller::new(shared.clone(), path, tasks.clone());
        first_snapshot(&shared, &mut controller, &config).await?;

        let listeners = bind_listeners(&config).await?;
        // `[admin]`, its token file read now: a bad one stops the start.
        let admin_sockets = match &config.admin {
            Some(admin) => Some(AdminSockets::bind(admin).await?),
            None => None,
        };
        controller.adopt(listeners);
        controller.reconcile_health();
        controller.watch_files();
        let admin_addr = admin_sockets.as_ref().map(AdminSockets::admin_addr);
        let admin = admin_sockets.map(|sockets| serve_admin(sockets, &shared));
        shared.readiness.set(true);
        metrics::gauge!(DRAINING).set(0.0);

        let stop = CancellationToken::new();
        let controller = Service {
            join: tokio::spawn(controller.run(sighup, control_rx, stop.clone())),
            stop,
        };
        let task = tokio::spawn(drain::run(
            shared.clone(),
            tasks,
            shutdown,
            controller,
            admin,
        ));
        Ok(LbHandle {
            admin: admin_addr,
            shared,
            task,
        })
    }
}

/// Only the aws-lc-rs provider is used (explicitly everywhere); installing it as the process default too keeps
/// any library that asks for the default from picking another. Fails harmlessly if one is set already.
fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Starts discovery (when `[discovery]` is set) and waits briefly for its first set, then builds the first real
/// snapshot and swaps it in for the placeholder.
async fn first_snapshot(
    shared: &Shared,
    controller: &mut Controller,
    config: &LbConfig,
) -> Result<(), LbError> {
    let endpoints = controller
        .start_discovery(reload::discovery_source(config), DISCOVERY_STARTUP_WAIT)
        .await?;
    let first = Snapshot::build(config.clone(), &endpoints, &controller.source_label(), None)?;
    metrics::gauge!(BACKENDS).set(first.backends.all().len() as f64);
    metrics::gauge!(SNAPSHOT_GENERATION).set(first.generation as f64);
    shared.snapshot.store(first);
    Ok(())
}

/// Binds every listener of `config` (each logs `listening`); the sockets go to the controller's accept loops.
async fn bind_listeners(config: &LbConfig) -> Result<Vec<Bound>, LbError> {
    let mut bound = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        let socket = listener::bind(&l.name, l.bind)
            .await
            .map_err(|source| LbError::Bind {
                role: l.name.clone(),
                addr: l.bind,
                source,
            })?;
        bound.push(socket);
    }
    Ok(bound)
}

/// Serves `/healthz`, `/readyz`, `/metrics` and the LB's routes ([`crate::admin_routes`]) on the admin socket.
fn serve_admin(sockets: AdminSockets, shared: &Arc<Shared>) -> Service {
    let state = AdminState {
        readiness: shared.readiness.clone(),
        metrics: fleetgate_ops::telemetry::install(),
        // With `[admin] token_file`, every one of these routes needs `Authorization: Bearer <token>`.
        routes: Some(Arc::new(LbRoutes::new(shared.clone()))),
    };
    let stop = CancellationToken::new();
    Service {
        join: tokio::spawn(sockets.serve(state, stop.clone())),
        stop,
    }
}

/// `fleetgate lb --config <path>`: loads the config, serves until `shutdown` is cancelled (or `POST /drain`),
/// then drains. Each `()` on `sighup` reloads the config, as do file changes and `POST /reload`.
pub async fn run(
    config_path: &Path,
    shutdown: CancellationToken,
    sighup: Option<mpsc::Receiver<()>>,
) -> Result<(), LbError> {
    let handle = Lb::start_file(config_path, sighup, shutdown).await?;
    handle.wait().await
}

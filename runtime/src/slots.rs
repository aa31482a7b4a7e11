//! A process's connections to a shared working database, each in a pool of
//! its own ("slots"), handed to transaction-mode tests one at a time.
//!
//! Why not one pool of N connections: a test's connection must be lendable
//! to sqlx's own `Transaction` (what `Acquire::begin` on `&Db` returns),
//! which owns a `PoolConnection` and gives it back to its pool when it is
//! dropped. From a shared pool, another test could take it there, mid-way
//! through this test's transaction; from a pool of one, it comes back to
//! this test alone (see `shared::slot` and `generic::shared::slot`).

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// Builds one slot: a pool of at most one connection, given the cell its
/// `after_connect` may keep the connection's server-side id in.
type MakeSlot<DB> = Box<dyn Fn(&SessionId) -> Pool<DB> + Send + Sync>;

/// A slot's cell for its connection's server-side id (MySQL's
/// `CONNECTION_ID()`), written by the pool's `after_connect` each time the
/// slot opens a connection: a pool of one has one connection at a time, so
/// it is the id of the connection a checkout hands out. 0 where unused.
pub(crate) type SessionId = Arc<AtomicU64>;

/// One free slot: its pool, its [`SessionId`], and the connection the last
/// test left healthy, if any, parked here rather than in the pool (see
/// [`Home::park`]).
type Slot<DB> = (Pool<DB>, SessionId, Option<Parked<DB>>);

/// A connection parked in a free slot.
enum Parked<DB: Database> {
    /// Rolled back, outside a transaction ([`Home::park`]).
    Idle(PoolConnection<DB>),
    /// Readied by a task of the shared runtime ([`HomeCell::park_after`]),
    /// or at the end of the test ([`HomeCell::park_begun`]): the connection
    /// with the next test's transaction open on it, and since when; or
    /// `None` if it could not be readied (closed).
    Readying(oneshot::Receiver<Option<(PoolConnection<DB>, Instant)>>),
    /// What a [`Parked::Readying`] task gave, taken from it when a test
    /// looked for a slot whose connection is ready (see [`pick`]).
    Readied(Option<(PoolConnection<DB>, Instant)>),
}

/// The free slot a test takes: the last one given back whose connection is
/// ready (parked idle, readied by its task, or none parked), else the one
/// whose task has been at it longest; `None` when no slot is free.
///
/// Not simply the last one given back: that is, most of the time, the slot
/// the test before on the same thread just left, its task still sending
/// the `ROLLBACK` of that test and the `BEGIN` of the next. With one slot
/// more than tests run at once (see `Slots::prewarm`), the next test takes
/// one readied meanwhile and does not wait for that round trip.
fn pick<DB: Database>(free: &mut Vec<Slot<DB>>) -> Option<Slot<DB>> {
    for i in (0..free.len()).rev() {
        let ready = match &mut free[i].2 {
            Some(Parked::Readying(readying)) => match readying.try_recv() {
                Ok(readied) => Some(readied),
                Err(oneshot::error::TryRecvError::Closed) => Some(None),
                Err(oneshot::error::TryRecvError::Empty) => None,
            },
            _ => return Some(free.remove(i)),
        };
        if let Some(readied) = ready {
            free[i].2 = Some(Parked::Readied(readied));
            return Some(free.remove(i));
        }
    }
    (!free.is_empty()).then(|| free.remove(0))
}

/// The slots of one working database.
pub(crate) struct Slots<DB: Database> {
    make: MakeSlot<DB>,
    free: Arc<Mutex<Vec<Slot<DB>>>>,
    /// One permit per connection the process may hold at once.
    permits: Arc<Semaphore>,
    acquire_timeout: Duration,
}

/// A test's slot: its pool of one, for as long as the test holds it.
pub(crate) struct Home<DB: Database> {
    pub(crate) pool: Pool<DB>,
    session: SessionId,
    /// When the connection checked out with this slot had the test's
    /// transaction opened on it already (see [`HomeCell::park_after`]).
    begun: Option<Instant>,
    free: Arc<Mutex<Vec<Slot<DB>>>>,
    _permit: OwnedSemaphorePermit,
}

impl<DB: Database> Slots<DB> {
    /// `size` slots at most, each built by `make` (which must give a pool
    /// of `max_connections(1)`); a checkout waits `acquire_timeout` at most.
    pub(crate) fn new(
        size: u32,
        acquire_timeout: Duration,
        make: impl Fn(&SessionId) -> Pool<DB> + Send + Sync + 'static,
    ) -> Self {
        Slots {
            make: Box::new(make),
            free: Arc::default(),
            permits: Arc::new(Semaphore::new(size.max(1) as usize)),
            acquire_timeout,
        }
    }

    /// Takes a slot and its connection (see [`Slots::take`]): the one
    /// parked in it (once readied, if a task is still at it), or one from
    /// its pool (opened if it has none). [`Home::begun_since`] says whether
    /// the test's transaction is open on it already.
    pub(crate) async fn checkout_connection(
        &self,
    ) -> Result<(PoolConnection<DB>, Home<DB>), sqlx::Error> {
        let (mut home, parked) = self.take().await?;
        let readied = match parked {
            Some(Parked::Idle(conn)) => return Ok((conn, home)),
            Some(Parked::Readying(ready)) => ready.await.ok().flatten(),
            Some(Parked::Readied(readied)) => readied,
            None => None,
        };
        match readied {
            Some((conn, since)) => {
                home.begun = Some(since);
                Ok((conn, home))
            }
            None => Ok((acquire(&home).await?, home)),
        }
    }

    /// Opens a connection in a new free slot ahead of the test that will
    /// take it, and readies it with `ready` (which opens the test's
    /// transaction), in a task of the shared runtime: the test takes it as
    /// one readied after a test (see [`HomeCell::park_after`]), waiting for
    /// the task if it is still at it. `ready` gives the connection back, or
    /// `None` (the slot then opens another for the test, which reports what
    /// fails).
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    pub(crate) fn prewarm<F>(&self, ready: impl FnOnce(PoolConnection<DB>) -> F + Send + 'static)
    where
        F: Future<Output = Option<PoolConnection<DB>>> + Send + 'static,
    {
        let session = SessionId::default();
        let pool = (self.make)(&session);
        let (readied, readying) = oneshot::channel();
        crate::shared::lock(&self.free).push((
            pool.clone(),
            session,
            Some(Parked::Readying(readying)),
        ));
        crate::run::shared_runtime().spawn(async move {
            let ready = match pool.acquire().await {
                Ok(conn) => ready(conn).await.map(|conn| (conn, Instant::now())),
                Err(_) => None,
            };
            let _ = readied.send(ready);
        });
    }

    /// Takes a slot, and the connection parked in it (`PoolTimedOut` when
    /// every slot stays taken for the acquire timeout).
    async fn take(&self) -> Result<(Home<DB>, Option<Parked<DB>>), sqlx::Error> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                crate::clock::timeout(self.acquire_timeout, self.permits.clone().acquire_owned())
                    .await
                    .map_err(|()| sqlx::Error::PoolTimedOut)?
                    .map_err(|_| sqlx::Error::PoolClosed)?
            }
        };
        let picked = pick(&mut crate::shared::lock(&self.free));
        let (pool, session, parked) = picked.unwrap_or_else(|| {
            let session = SessionId::default();
            ((self.make)(&session), session, None)
        });
        let home = Home {
            pool,
            session,
            begun: None,
            free: self.free.clone(),
            _permit: permit,
        };
        Ok((home, parked))
    }
}

/// The slot's connection (opened if it has none), when none was parked in
/// it. Built and boxed here: sqlx's checkout future is large, and built in
/// `checkout_connection` it would take room in that function's frame (in a
/// debug build) for every test, on the test's new thread's stack.
fn acquire<DB: Database>(
    home: &Home<DB>,
) -> futures_util::future::BoxFuture<'static, Result<PoolConnection<DB>, sqlx::Error>> {
    let pool = home.pool.clone();
    Box::pin(async move { pool.acquire().await })
}

impl<DB: Database> Home<DB> {
    /// When the connection handed out with this slot was last readied with
    /// the test's transaction opened on it (see [`HomeCell::park_after`]);
    /// `None`: it is outside a transaction.
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    pub(crate) fn begun_since(&self) -> Option<Instant> {
        self.begun
    }

    /// The slot's cell for its connection's server-side id (see
    /// [`SessionId`]): it follows the connection the slot's pool opens in
    /// place of one whose session ended (see `Shared::replace`).
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    pub(crate) fn session(&self) -> SessionId {
        self.session.clone()
    }

    /// Closes `conn` (it could not begin a test: a server restart, a
    /// terminated session) and gives the slot back; it opens a new one.
    pub(crate) fn discard(self, mut conn: PoolConnection<DB>) {
        conn.close_on_drop();
        drop(conn);
        self.give_back(true);
    }

    /// Gives the slot back for the next test; `reusable` is false when its
    /// connection may still be out (a task of the test holds it): the slot
    /// is closed then, and its connection with it when it comes back.
    pub(crate) fn give_back(self, reusable: bool) {
        if reusable && !self.pool.is_closed() {
            crate::shared::lock(&self.free).push((self.pool.clone(), self.session.clone(), None));
        } else {
            // Marks it closed at once; the rest needs no waiting for.
            drop(self.pool.close());
        }
    }

    /// Gives the slot back with `conn`, its connection, which the test left
    /// rolled back and healthy: the next test takes it from here. Going back
    /// through the pool would cost a round trip (sqlx pings a connection
    /// that comes back, in a task of its own, and the next test's acquire
    /// waits for it), and a task's wake-ups, per test. A connection that
    /// broke while parked (a server restart) fails the next test's BEGIN,
    /// which then discards it and opens another (see `setup`).
    pub(crate) fn park(self, conn: PoolConnection<DB>) {
        if self.pool.is_closed() {
            drop(conn);
            return;
        }
        crate::shared::lock(&self.free).push((
            self.pool.clone(),
            self.session.clone(),
            Some(Parked::Idle(conn)),
        ));
    }
}

/// A test's [`Home`], from the start of its transaction until [`HomeCell::release`]
/// at its end (the test's handle may live on, in a task that outlived it).
pub(crate) struct HomeCell<DB: Database>(Mutex<Option<Home<DB>>>);

impl<DB: Database> HomeCell<DB> {
    pub(crate) fn new(home: Home<DB>) -> Self {
        HomeCell(Mutex::new(Some(home)))
    }

    /// The pool the test's connection comes back to.
    pub(crate) fn pool(&self) -> Option<Pool<DB>> {
        crate::shared::lock(&self.0)
            .as_ref()
            .map(|home| home.pool.clone())
    }

    /// Gives the slot back (see [`Home::give_back`]), once.
    pub(crate) fn release(&self, reusable: bool) {
        if let Some(home) = crate::shared::lock(&self.0).take() {
            home.give_back(reusable);
        }
    }

    /// Gives the slot back with its healthy connection parked in it (see
    /// [`Home::park`]), once; a slot already given back lets `conn` return
    /// to its pool.
    pub(crate) fn park(&self, conn: PoolConnection<DB>) {
        match crate::shared::lock(&self.0).take() {
            Some(home) => home.park(conn),
            None => drop(conn),
        }
    }

    /// Gives the slot back with `conn`, its connection, still in the test's
    /// transaction, which `ready` ends and replaces with the next test's in
    /// a task of the shared runtime, off the test's time: the slot is free
    /// at once, and the next test that takes it waits for that task (see
    /// [`Slots::checkout_connection`]). `ready` gives the connection back,
    /// or `None` if it could not ready it (the slot then opens another). A
    /// slot already given back lets `conn` return to its pool.
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    pub(crate) fn park_after<F>(
        &self,
        conn: PoolConnection<DB>,
        ready: impl FnOnce(PoolConnection<DB>) -> F,
    ) where
        F: Future<Output = Option<PoolConnection<DB>>> + Send + 'static,
    {
        let Some(readied) = self.give_back_readying() else {
            drop(conn);
            return;
        };
        let readying = ready(conn);
        crate::run::shared_runtime().spawn(async move {
            let ready = readying.await.map(|conn| (conn, Instant::now()));
            let _ = readied.send(ready);
        });
    }

    /// Gives the slot back with `conn`, its connection, on which the next
    /// test's transaction is open already (see `RESTART_TEST`); a slot
    /// already given back lets `conn` return to its pool.
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    pub(crate) fn park_begun(&self, conn: PoolConnection<DB>) {
        match self.give_back_readying() {
            Some(readied) => {
                let _ = readied.send(Some((conn, Instant::now())));
            }
            None => drop(conn),
        }
    }

    /// Gives the slot back, once, as [`Parked::Readying`]: the sender its
    /// connection is to be handed to. `None` when the slot was given back
    /// already or its pool is closed.
    #[allow(clippy::type_complexity)]
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    fn give_back_readying(&self) -> Option<oneshot::Sender<Option<(PoolConnection<DB>, Instant)>>> {
        let home = crate::shared::lock(&self.0).take()?;
        if home.pool.is_closed() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        crate::shared::lock(&home.free).push((
            home.pool.clone(),
            home.session.clone(),
            Some(Parked::Readying(rx)),
        ));
        Some(tx)
    }

    /// On the body's own runtime, before it is dropped: lets a connection
    /// that is on its way back to the pool (through a task on that runtime,
    /// lost with it otherwise) arrive.
    pub(crate) async fn settle(&self) {
        if let Some(pool) = self.pool() {
            crate::run::settle_pool(&pool).await;
        }
    }
}

/// A slot pool's `after_release`: a connection that comes back through the
/// pool (lent to an app's `Transaction`, or left by a caller that was
/// dropped) may bring the error of a statement sqlx queued, the `ROLLBACK
/// TO` of a `Transaction` dropped after its cut `commit()` had released the
/// savepoint on the server. sqlx pings it on release and would close it
/// for that error, with the test's transaction: the error is read here
/// (sqlx's own ping, right after, then finds the connection in step). (On
/// PostgreSQL the aborted transaction it leaves is undone before the next
/// statement, see `refresh_savepoint`.)
pub(crate) fn read_queued_error<DB: Database>(
    conn: &mut DB::Connection,
    _meta: sqlx::pool::PoolConnectionMetadata,
) -> futures_util::future::BoxFuture<'_, sqlx::Result<bool>> {
    Box::pin(async move {
        match sqlx::Connection::ping(&mut *conn).await {
            Err(e) if e.as_database_error().is_none() => Err(e),
            _ => Ok(true),
        }
    })
}

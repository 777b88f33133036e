//! Deadlines that are set for every request and almost never reached: one timer per app
//! connection, re-armed only when it fires early, instead of a timer per request.
//!
//! A tokio `Sleep` goes into the runtime's timer wheel when first polled and out again when it
//! is dropped or reset: two wheel operations and a clock read for every request's response
//! timeout, and the same again for hyper's header read timeout (a new `Sleep` per request
//! head). A [`Coarse`] timer keeps one `Sleep` per connection. Each wait names its own
//! deadline; the `Sleep` is moved only when it would fire *later* than the deadline being
//! waited for. When it fires earlier (at an older request's deadline) the wait that sees it
//! checks its own deadline and arms the `Sleep` for that. So a connection serving requests
//! back to back touches the wheel about once per timeout period, and a deadline that passes is
//! still seen when it passes.
//!
//! One [`Coarse`] serves waits that do not overlap in time (the connection's response waits,
//! or hyper's header reads): two overlapping waits with different deadlines would each re-arm
//! it for their own.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// One connection's timer for waits that do not overlap (see the module documentation).
#[derive(Clone, Default)]
pub struct Coarse(Arc<Mutex<Option<Pin<Box<Sleep>>>>>);

impl std::fmt::Debug for Coarse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Coarse")
    }
}

impl Coarse {
    /// Ready once `deadline` has passed; until then the timer is armed no later than it and
    /// wakes `cx` when it fires.
    pub fn poll_expired(&self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let sleep = slot.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() > deadline {
            sleep.as_mut().reset(deadline);
        }
        loop {
            match sleep.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                // It fired at or after this deadline: the deadline has passed.
                Poll::Ready(()) if sleep.deadline() >= deadline => return Poll::Ready(()),
                // It fired for an earlier wait's deadline: arm it for this one.
                Poll::Ready(()) => sleep.as_mut().reset(deadline),
            }
        }
    }

    /// A hyper timer whose sleeps all use this timer.
    pub fn for_hyper(&self) -> HyperTimer {
        HyperTimer(self.clone())
    }
}

/// [`Coarse`] as hyper's `Timer` (for an HTTP/1 server connection: its header read timeout).
#[derive(Clone, Debug)]
pub struct HyperTimer(Coarse);

/// A hyper sleep: a deadline waited for on the connection's [`Coarse`] timer.
struct CoarseSleep {
    timer: Coarse,
    deadline: Instant,
}

impl Future for CoarseSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.timer.poll_expired(self.deadline, cx)
    }
}

impl hyper::rt::Sleep for CoarseSleep {}

impl hyper::rt::Timer for HyperTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until((Instant::now() + duration).into_std())
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(CoarseSleep {
            timer: self.0.clone(),
            deadline: deadline.into(),
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        match sleep.as_mut().downcast_mut_pin::<CoarseSleep>() {
            Some(mut coarse) => coarse.deadline = new_deadline.into(),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }

    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `coarse` for `deadline` once, with a waker that records whether it was woken.
    fn poll_once(
        coarse: &Coarse,
        deadline: Instant,
        woken: &Arc<std::sync::atomic::AtomicBool>,
    ) -> Poll<()> {
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let waker = std::task::Waker::from(Arc::new(Flag(woken.clone())));
        coarse.poll_expired(deadline, &mut Context::from_waker(&waker))
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_is_seen_when_it_passes_and_not_before() {
        let coarse = Coarse::default();
        let woken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let deadline = Instant::now() + Duration::from_secs(30);
        assert!(poll_once(&coarse, deadline, &woken).is_pending());
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(poll_once(&coarse, deadline, &woken).is_pending());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(poll_once(&coarse, deadline, &woken).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_wait_rearms_the_timer_only_when_it_fires_early() {
        let coarse = Coarse::default();
        let woken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let first = Instant::now() + Duration::from_secs(30);
        assert!(poll_once(&coarse, first, &woken).is_pending());
        // The next request, 10 s later: its deadline is 40 s from the start. The timer stays
        // armed for 30 s (no wheel operation) ...
        tokio::time::advance(Duration::from_secs(10)).await;
        let second = Instant::now() + Duration::from_secs(30);
        assert!(poll_once(&coarse, second, &woken).is_pending());
        assert_eq!(coarse.0.lock().unwrap().as_ref().unwrap().deadline(), first);
        // ... fires at 30 s and wakes the waiter, which finds its own deadline not reached
        // and re-arms for it ...
        tokio::time::advance(Duration::from_secs(20)).await;
        tokio::task::yield_now().await;
        assert!(
            woken.load(std::sync::atomic::Ordering::SeqCst),
            "woken at 30 s"
        );
        assert!(poll_once(&coarse, second, &woken).is_pending());
        assert_eq!(
            coarse.0.lock().unwrap().as_ref().unwrap().deadline(),
            second
        );
        // ... and the second deadline is seen when it passes.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(poll_once(&coarse, second, &woken).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_moves_the_timer_at_once() {
        let coarse = Coarse::default();
        let woken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let long = Instant::now() + Duration::from_secs(60);
        assert!(poll_once(&coarse, long, &woken).is_pending());
        // A reload shortened the timeout: the next wait's deadline comes first.
        let short = Instant::now() + Duration::from_secs(5);
        assert!(poll_once(&coarse, short, &woken).is_pending());
        tokio::time::advance(Duration::from_secs(5)).await;
        tokio::task::yield_now().await;
        assert!(
            woken.load(std::sync::atomic::Ordering::SeqCst),
            "woken at 5 s"
        );
        assert!(poll_once(&coarse, short, &woken).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn hypers_sleeps_reset_their_deadline_without_a_new_timer() {
        use hyper::rt::Timer as _;
        let coarse = Coarse::default();
        let timer = coarse.for_hyper();
        let start = Instant::now();
        let mut sleep = timer.sleep(Duration::from_secs(10));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        timer.reset(&mut sleep, (start + Duration::from_secs(20)).into_std());
        assert!(sleep.as_mut().downcast_mut_pin::<CoarseSleep>().is_some());
        tokio::time::advance(Duration::from_secs(15)).await;
        assert!(sleep.as_mut().poll(&mut cx).is_pending(), "reset to 20 s");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(sleep.as_mut().poll(&mut cx).is_ready());
    }
}

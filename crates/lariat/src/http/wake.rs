//! Futures a connection's loop watches beside hyper (the drain, the hand-over offer, its timer),
//! polled only when they woke: the loop wakes once or twice per request for hyper, and polling each
//! watched future every time would take a lock (a cancellation token's) or re-register a waker for
//! nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// The waker given to the watched future: notes that it fired, then wakes the task.
struct Flag {
    woken: AtomicBool,
    task: Waker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

pin_project_lite::pin_project! {
    /// A future polled only after its own waker fired (or the task's waker changed, or the caller
    /// touched it through [`inner_mut`](Self::inner_mut)); otherwise a poll is one atomic load (no write).
    pub(crate) struct OnWake<F> {
        #[pin]
        inner: F,
        flag: Option<Arc<Flag>>,
        touched: bool,
    }
}

impl<F> OnWake<F> {
    pub(crate) fn new(inner: F) -> OnWake<F> {
        OnWake {
            inner,
            flag: None,
            touched: true,
        }
    }

    /// The future itself, to reset a timer for instance; the next poll polls it.
    pub(crate) fn inner_mut(self: Pin<&mut Self>) -> Pin<&mut F> {
        let this = self.project();
        *this.touched = true;
        this.inner
    }
}

impl<F: Future> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let flag = match this.flag {
            Some(flag) if flag.task.will_wake(cx.waker()) => {
                // A load first: most polls find nothing, and a swap is a locked write every time.
                let woken =
                    flag.woken.load(Ordering::Relaxed) && flag.woken.swap(false, Ordering::Acquire);
                if !std::mem::take(this.touched) && !woken {
                    return Poll::Pending;
                }
                flag.clone()
            }
            _ => {
                *this.touched = false;
                let flag = Arc::new(Flag {
                    woken: AtomicBool::new(false),
                    task: cx.waker().clone(),
                });
                *this.flag = Some(flag.clone());
                flag
            }
        };
        let waker = Waker::from(flag);
        this.inner.poll(&mut Context::from_waker(&waker))
    }
}

/// One waker for several [`OnWake`] futures a loop watches together: polled through the gate, they
/// cost one atomic load per wake-up of the task between them, not one each.
pub(crate) struct Gate {
    flag: Option<Arc<Flag>>,
}

impl Gate {
    pub(crate) fn new() -> Gate {
        Gate { flag: None }
    }

    /// The waker to poll the watched futures with, when one of them may have something to say: one
    /// woke since the last call, the task's waker changed, or `fresh` (the caller changed what it
    /// watches). `None`: nothing to poll. Inlined: it runs at every wake-up of a connection's task,
    /// in code generic over the service (compiled in the crate that names it).
    #[inline]
    pub(crate) fn opened(&mut self, cx: &Context<'_>, fresh: bool) -> Option<Waker> {
        match &self.flag {
            Some(flag) if flag.task.will_wake(cx.waker()) => {
                let woken =
                    flag.woken.load(Ordering::Relaxed) && flag.woken.swap(false, Ordering::Acquire);
                (woken || fresh).then(|| Waker::from(flag.clone()))
            }
            _ => {
                let flag = Arc::new(Flag {
                    woken: AtomicBool::new(false),
                    task: cx.waker().clone(),
                });
                self.flag = Some(flag.clone());
                Some(Waker::from(flag))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn wakes_for_its_future_and_after_a_reset() {
        let token = tokio_util::sync::CancellationToken::new();
        let mut watch = Box::pin(OnWake::new(token.clone().cancelled_owned()));
        assert!(futures_poll(watch.as_mut()).await.is_pending());
        assert!(futures_poll(watch.as_mut()).await.is_pending());
        token.cancel();
        assert!(futures_poll(watch.as_mut()).await.is_ready());

        // A timer that fired, was reset, and fires again.
        let mut timer = Box::pin(OnWake::new(tokio::time::sleep(Duration::from_millis(5))));
        timer.as_mut().await;
        timer
            .as_mut()
            .inner_mut()
            .reset(tokio::time::Instant::now() + Duration::from_millis(5));
        tokio::time::timeout(Duration::from_secs(5), timer.as_mut())
            .await
            .expect("the reset timer fires");
    }

    #[tokio::test]
    async fn a_gate_opens_when_a_watched_future_woke() {
        let token = tokio_util::sync::CancellationToken::new();
        let mut watch = Box::pin(OnWake::new(token.clone().cancelled_owned()));
        let mut gate = Gate::new();
        // The first poll registers; after it, nothing woke: the gate stays shut unless told.
        assert_eq!(through(&mut gate, watch.as_mut(), false).await, Some(false));
        assert_eq!(through(&mut gate, watch.as_mut(), false).await, None);
        assert_eq!(through(&mut gate, watch.as_mut(), true).await, Some(false));
        token.cancel();
        assert_eq!(through(&mut gate, watch.as_mut(), false).await, Some(true));
    }

    /// Polls `watch` once through `gate`: `None` if the gate stayed shut, else whether it was ready.
    async fn through<F: Future>(
        gate: &mut Gate,
        mut watch: Pin<&mut F>,
        fresh: bool,
    ) -> Option<bool> {
        std::future::poll_fn(|cx| {
            Poll::Ready(gate.opened(cx, fresh).map(|waker| {
                watch
                    .as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_ready()
            }))
        })
        .await
    }

    /// Polls once.
    async fn futures_poll<F: Future>(mut f: Pin<&mut F>) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await
    }
}

//! Each runtime thread's buffers for the TLS records being read and made, and the helpers that fill
//! them from rustls' unbuffered calls.

use std::cell::RefCell;

use rustls::unbuffered::{EncodeError, EncryptError};

/// Each runtime thread's buffers for the records being read and made, so that neither a read nor a
/// write allocates (or zeroes) a buffer: a connection's own buffers only hold what the socket could
/// not take or a partial record, and are freed when they drain.
#[derive(Default)]
pub(super) struct Scratch {
    pub(super) input: Vec<u8>,
    pub(super) output: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch buffers (fresh ones if they are in use or the thread is ending).
pub(super) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    let mut f = Some(f);
    let ran = SCRATCH.try_with(|cell| {
        let mut scratch = cell.try_borrow_mut().ok()?;
        f.take().map(|f| f(&mut scratch))
    });
    match (ran, f) {
        (Ok(Some(result)), _) => result,
        (_, Some(f)) => f(&mut Scratch::default()),
        (_, None) => unreachable!("`f` is only taken to run it, and its result is returned"),
    }
}

/// Records being made in a buffer that stays initialised between uses: `buf[..len]` are the records.
pub(super) struct Out<'a> {
    buf: &'a mut Vec<u8>,
    len: usize,
}

impl<'a> Out<'a> {
    pub(super) fn new(buf: &'a mut Vec<u8>) -> Out<'a> {
        Out { buf, len: 0 }
    }

    pub(super) fn filled(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Appends `bytes` (records sealed elsewhere).
    pub(super) fn push(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
    }

    /// Appends what `f` writes, with room for `guess` bytes, or for what `f` says it needs once.
    pub(super) fn fill(
        &mut self,
        guess: usize,
        mut f: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
    ) -> Result<(), ()> {
        let mut room = guess;
        for _ in 0..2 {
            let end = self.len + room;
            if self.buf.len() < end {
                self.buf.resize(end, 0);
            }
            match f(&mut self.buf[self.len..end]) {
                Ok(n) => {
                    self.len += n;
                    return Ok(());
                }
                Err(Some(needed)) => room = needed,
                Err(None) => break,
            }
        }
        Err(())
    }
}

pub(super) fn encrypted(result: Result<usize, EncryptError>) -> Result<usize, Option<usize>> {
    match result {
        Ok(n) => Ok(n),
        Err(EncryptError::InsufficientSize(s)) => Err(Some(s.required_size)),
        Err(_) => Err(None),
    }
}

pub(super) fn encoded(result: Result<usize, EncodeError>) -> Result<usize, Option<usize>> {
    match result {
        Ok(n) => Ok(n),
        Err(EncodeError::InsufficientSize(s)) => Err(Some(s.required_size)),
        Err(_) => Err(None),
    }
}

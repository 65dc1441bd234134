//! How a lifecycle ended, as a process exit code.

use std::process::ExitCode;

/// How [`Lifecycle::run`](super::Lifecycle::run) ended. A program exits with [`code`](Exit::code), so a
/// supervisor or an operator tells a clean stop from one that cut connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every connection ended on its own before the deadline (or the server was stopped from
    /// elsewhere): exit code 0.
    Clean,
    /// The drain closed connections (at its deadline, or on a second stop signal), or left clients in a
    /// queue: exit code 3.
    Forced,
}

impl Exit {
    /// The exit code of a drain that had to close connections; a supervisor reading a worker's status
    /// compares with it.
    pub const FORCED_CODE: u8 = 3;

    /// The process exit code: 0 or [`FORCED_CODE`](Self::FORCED_CODE).
    pub fn code(self) -> u8 {
        match self {
            Exit::Clean => 0,
            Exit::Forced => Self::FORCED_CODE,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}

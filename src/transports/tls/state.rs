//! The TLS state machine (asyncio's `sslproto.SSLProtocolState`): its states, the codes Python
//! reads, and the one table of allowed steps. Only `TlsLayer::_enter_state` moves it.

/// The states of asyncio's TLS state machine (`sslproto.SSLProtocolState`). Python reads the
/// codes (`_state_code`, the class attributes `TlsLayer._UNWRAPPED`...) and moves only
/// through `_enter_state`, which refuses a step [`TlsState::may_enter`] does not allow.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(super) enum TlsState {
    Unwrapped = 0,
    DoHandshake = 1,
    Wrapped = 2,
    Flushing = 3,
    Shutdown = 4,
}

pub(super) const UNWRAPPED: TlsState = TlsState::Unwrapped;
pub(super) const DO_HANDSHAKE: TlsState = TlsState::DoHandshake;
pub(super) const WRAPPED: TlsState = TlsState::Wrapped;
pub(super) const FLUSHING: TlsState = TlsState::Flushing;
pub(super) const SHUTDOWN: TlsState = TlsState::Shutdown;

impl TlsState {
    const ALL: [TlsState; 5] = [UNWRAPPED, DO_HANDSHAKE, WRAPPED, FLUSHING, SHUTDOWN];

    pub(super) fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|state| *state as u8 == code)
    }

    /// asyncio's transition table: any state may fall back to UNWRAPPED (an abort, a failed
    /// handshake, the connection lost); otherwise only one step forward.
    pub(super) fn may_enter(self, next: TlsState) -> bool {
        matches!(
            (self, next),
            (_, UNWRAPPED)
                | (UNWRAPPED, DO_HANDSHAKE)
                | (DO_HANDSHAKE, WRAPPED)
                | (WRAPPED, FLUSHING)
                | (FLUSHING, SHUTDOWN)
        )
    }

    /// As asyncio prints the state in its error.
    pub(super) fn asyncio_name(self) -> &'static str {
        match self {
            UNWRAPPED => "SSLProtocolState.UNWRAPPED",
            DO_HANDSHAKE => "SSLProtocolState.DO_HANDSHAKE",
            WRAPPED => "SSLProtocolState.WRAPPED",
            FLUSHING => "SSLProtocolState.FLUSHING",
            SHUTDOWN => "SSLProtocolState.SHUTDOWN",
        }
    }
}

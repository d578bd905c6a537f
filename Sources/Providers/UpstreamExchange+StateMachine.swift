import NIOCore
import NIOHTTP1

/// The life of one upstream exchange, from waiting for a connection to the end of its answer, as a value: no I/O,
/// no clock, no callbacks. Every input carries what it needs (time included) and returns what the shell must do;
/// the shell (`Exchange`) performs it. Modelled on AsyncHTTPClient's `Transaction.StateMachine`.
///
/// The properties it keeps: the caller is answered exactly once; a connection goes back to the pool only after its
/// answer ended whole; a cancellation that arrives before the exchange starts still ends it; no request is sent a
/// second time; and every phase has a deadline (the wait for a connection and for the head, the total, and the gap
/// between bytes once the answer has begun).
struct UpstreamExchangeStateMachine {
    enum State {
        /// Not started yet.
        case initial
        /// Waiting for a connection (new or from the pool).
        case queued
        /// The request was written on a connection; nothing of the answer has arrived.
        case awaitingHead
        /// An answer read whole (non-streamed requests, and every non-200 answer): its head, and the body so far.
        case collecting(HTTPResponseHead, ByteBuffer)
        /// A streamed answer: the caller has the head; body parts wait here for the reader.
        case streaming(Stream)
        /// The caller was answered and, for a stream, the reader has seen the end or the failure.
        case finished
    }

    struct Stream {
        var parts = CircularBuffer<ByteBuffer>()
        var readerWaiting = false
        /// The body ended (the connection went back to the pool or closed).
        var ended = false
        var failure: UpstreamTransportError?
        /// Reading from the socket paused because `highWater` parts wait unread.
        var paused = false
    }

    /// What the shell does, in this order: the connection first, then the caller, then the stream's reader.
    struct Action {
        enum Caller {
            case succeedStreaming(HTTPResponseHead)
            case succeedWhole(HTTPResponseHead, ByteBuffer)
            case fail(UpstreamTransportError)
        }
        enum Reader {
            case deliver(ByteBuffer?)
            case fail(UpstreamTransportError)
        }
        enum Connection: Equatable {
            /// Ask the pool for a connection.
            case acquire
            /// Leave the pool's queue (the exchange ended while waiting).
            case leaveQueue
            /// Write the request on the assigned connection.
            case writeRequest
            /// The answer ended whole: the connection may carry another request if `keepAlive`.
            case answerEnded(keepAlive: Bool)
            /// The answer cannot complete: close the connection.
            case close
            case pauseReading
            case resumeReading
        }
        var connection: Connection?
        var caller: Caller?
        var reader: Reader?

        static let none = Action()
    }

    private(set) var state = State.initial
    let streaming: Bool
    let maximumBodyBytes: Int
    /// When the whole exchange must have ended.
    let totalDeadline: NIODeadline
    /// When the exchange must have a connection: waiting in the pool's queue counts against the first-token timeout.
    let queueDeadline: NIODeadline
    /// When the answer's head must have arrived (the wait for a connection included).
    let headDeadline: NIODeadline
    /// The longest gap between two reads of the answer, once its head arrived, while the client keeps up.
    let idleTimeout: TimeAmount
    private var lastActivity: NIODeadline

    static let highWater = 16
    static let lowWater = 4

    init(streaming: Bool, maximumBodyBytes: Int, totalDeadline: NIODeadline, queueDeadline: NIODeadline,
         headDeadline: NIODeadline, idleTimeout: TimeAmount, now: NIODeadline) {
        self.streaming = streaming
        self.maximumBodyBytes = maximumBodyBytes
        self.totalDeadline = totalDeadline
        self.headDeadline = min(headDeadline, totalDeadline)
        self.queueDeadline = min(queueDeadline, self.headDeadline)
        self.idleTimeout = idleTimeout
        self.lastActivity = now
    }

    /// Whether the exchange holds a connection whose answer is still arriving.
    var holdsConnection: Bool {
        switch state {
        case .awaitingHead, .collecting: true
        case .streaming(let stream): !stream.ended && stream.failure == nil
        case .initial, .queued, .finished: false
        }
    }

    /// Whether a streamed answer's reader would take more parts now.
    var wantsMoreData: Bool {
        if case .streaming(let stream) = state { return stream.parts.count < Self.highWater }
        return true
    }

    var receivedHead: Bool {
        switch state {
        case .collecting, .streaming: true
        default: false
        }
    }

    // MARK: Inputs

    mutating func start() -> Action {
        switch state {
        case .initial:
            state = .queued
            return Action(connection: .acquire)
        case .finished:
            // Cancelled before it started: the caller is waiting now, so answer it.
            return Action(caller: .fail(.cancelled))
        default:
            return .none
        }
    }

    /// The pool assigned a connection; `use` is false when the exchange ended meanwhile (give the connection back).
    mutating func connectionAssigned(now: NIODeadline) -> (use: Bool, action: Action) {
        guard case .queued = state else { return (false, .none) }
        state = .awaitingHead
        lastActivity = now
        return (true, Action(connection: .writeRequest))
    }

    /// The assigned connection closed before the request was written: nothing was sent, so waiting for another
    /// connection is safe.
    mutating func connectionUnusable() -> Action {
        guard case .awaitingHead = state else { return .none }
        state = .queued
        return Action(connection: .acquire)
    }

    /// The pool could not open a connection.
    mutating func connectFailed(_ error: UpstreamTransportError) -> Action {
        guard case .queued = state else { return .none }
        state = .finished
        return Action(caller: .fail(error))
    }

    mutating func head(_ head: HTTPResponseHead, now: NIODeadline) -> Action {
        guard case .awaitingHead = state else { return unexpectedPart() }
        lastActivity = now
        if streaming && head.status == .ok {
            state = .streaming(Stream())
            return Action(caller: .succeedStreaming(head))
        }
        state = .collecting(head, ByteBuffer())
        return .none
    }

    mutating func body(_ buffer: ByteBuffer, now: NIODeadline) -> Action {
        lastActivity = now
        switch state {
        case .collecting(let head, var collected):
            guard collected.readableBytes + buffer.readableBytes <= maximumBodyBytes else {
                state = .finished
                return Action(connection: .close, caller: .fail(.responseTooLarge))
            }
            // Out of the enum first, so the buffer is not copied on write.
            state = .finished
            var incoming = buffer
            collected.writeBuffer(&incoming)
            state = .collecting(head, collected)
            return .none
        case .streaming(var stream):
            guard !stream.ended, stream.failure == nil else { return .none }
            if stream.readerWaiting {
                stream.readerWaiting = false
                state = .streaming(stream)
                return Action(reader: .deliver(buffer))
            }
            stream.parts.append(buffer)
            var action = Action.none
            if stream.parts.count >= Self.highWater && !stream.paused {
                stream.paused = true
                action.connection = .pauseReading
            }
            state = .streaming(stream)
            return action
        default:
            return unexpectedPart()
        }
    }

    mutating func end(keepAlive: Bool) -> Action {
        switch state {
        case .collecting(let head, let collected):
            state = .finished
            return Action(connection: .answerEnded(keepAlive: keepAlive), caller: .succeedWhole(head, collected))
        case .streaming(var stream):
            guard !stream.ended, stream.failure == nil else { return .none }
            stream.ended = true
            stream.paused = false
            if stream.readerWaiting {
                state = .finished
                return Action(connection: .answerEnded(keepAlive: keepAlive), reader: .deliver(nil))
            }
            state = .streaming(stream)
            return Action(connection: .answerEnded(keepAlive: keepAlive))
        default:
            return unexpectedPart()
        }
    }

    /// A part that no state expects (the parser emits heads only at message boundaries): the connection is out of step.
    private mutating func unexpectedPart() -> Action {
        fail(.malformedResponse)
    }

    /// The connection closed, or its bytes did not parse.
    mutating func connectionLost(_ error: UpstreamTransportError = .connectionClosed) -> Action {
        guard holdsConnection else { return .none }
        return fail(error)
    }

    /// Deadlines and the idle gap, checked by the pool's sweep.
    mutating func tick(now: NIODeadline) -> Action {
        switch state {
        case .initial, .finished:
            return .none
        case .queued:
            if now >= queueDeadline { return fail(.poolTimeout) }
        case .awaitingHead:
            if now >= headDeadline { return fail(now >= totalDeadline ? .deadlineExceeded : .headTimeout) }
        case .collecting:
            if now >= totalDeadline { return fail(.deadlineExceeded) }
            if now - lastActivity >= idleTimeout { return fail(.idleTimeout) }
        case .streaming(let stream):
            guard !stream.ended, stream.failure == nil else { return .none }
            if now >= totalDeadline { return fail(.deadlineExceeded) }
            // Paused by a client that reads slowly: the upstream is not the one idling.
            if !stream.paused && now - lastActivity >= idleTimeout { return fail(.idleTimeout) }
        }
        return .none
    }

    /// Whether the sweep still needs to watch this exchange.
    var needsWatching: Bool {
        switch state {
        case .finished: false
        case .streaming(let stream): !stream.ended && stream.failure == nil
        default: true
        }
    }

    mutating func cancel() -> Action {
        fail(.cancelled)
    }

    /// Ends the exchange with `error`: the caller gets it if it has not been answered, else the stream's reader does.
    mutating func fail(_ error: UpstreamTransportError) -> Action {
        switch state {
        case .initial:
            state = .finished
            return .none
        case .queued:
            state = .finished
            return Action(connection: .leaveQueue, caller: .fail(error))
        case .awaitingHead, .collecting:
            state = .finished
            return Action(connection: .close, caller: .fail(error))
        case .streaming(var stream):
            guard !stream.ended, stream.failure == nil else {
                // Ended: parts already buffered still reach the reader; nothing else to fail.
                return .none
            }
            if stream.readerWaiting {
                state = .finished
                return Action(connection: .close, reader: .fail(error))
            }
            // Parts that arrived before the failure still reach the reader, then the failure does.
            stream.failure = error
            state = .streaming(stream)
            return Action(connection: .close)
        case .finished:
            return .none
        }
    }

    /// The stream's reader asks for the next part.
    mutating func readerNext(now: NIODeadline) -> Action {
        guard case .streaming(var stream) = state else {
            return Action(reader: .fail(.cancelled))
        }
        if let part = stream.parts.popFirst() {
            var action = Action(reader: .deliver(part))
            if stream.paused && stream.parts.count <= Self.lowWater {
                stream.paused = false
                lastActivity = now
                action.connection = .resumeReading
            }
            state = .streaming(stream)
            return action
        }
        if let failure = stream.failure {
            state = .finished
            return Action(reader: .fail(failure))
        }
        if stream.ended {
            state = .finished
            return Action(reader: .deliver(nil))
        }
        stream.readerWaiting = true
        var action = Action.none
        if stream.paused {
            stream.paused = false
            lastActivity = now
            action.connection = .resumeReading
        }
        state = .streaming(stream)
        return action
    }

    /// The stream's reader went away before the end.
    mutating func readerAbandoned() -> Action {
        guard case .streaming(let stream) = state else { return .none }
        if stream.ended || stream.failure != nil {
            state = .finished
            return .none
        }
        return fail(.cancelled)
    }
}

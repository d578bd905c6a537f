import NIOCore

/// How long an edge connection may take over each thing a client controls.
public struct EdgeTimeouts: Sendable, Hashable {
    /// From the connection's start, or from the first byte of a later request, until its head is complete.
    public var head: TimeAmount
    /// A keep-alive connection with nothing to read or answer is closed after this.
    public var idle: TimeAmount
    /// A body must arrive at this rate or faster (bytes per second) once `head` has passed since its head.
    public var bodyMinimumBytesPerSecond: Int
    /// An answer whose writes make no progress (the client stopped reading) for this long closes the connection;
    /// the request's upstream call is cancelled with it.
    public var write: TimeAmount

    public init(head: TimeAmount = .seconds(10), idle: TimeAmount = .seconds(75), bodyMinimumBytesPerSecond: Int = 1024,
                write: TimeAmount = .seconds(30)) {
        self.head = head
        self.idle = idle
        self.bodyMinimumBytesPerSecond = bodyMinimumBytesPerSecond
        self.write = write
    }

    /// How often a loop's connections are checked: a timeout fires up to this late.
    var sweepInterval: TimeAmount {
        let shortest = min(head, idle, write)
        return max(.milliseconds(10), min(.milliseconds(500), .nanoseconds(shortest.nanoseconds / 4)))
    }
}

/// The time limits of one edge connection, as a value: the handler reports what happens on the connection (time
/// passed in), the loop's sweep asks `check(now:)`, and the handler acts on the verdict. No clock, no timer, no I/O.
struct EdgeConnectionTimer {
    enum Reading: Equatable {
        /// No request is being read and none is being answered: the keep-alive idle timeout runs.
        case idle(since: NIODeadline)
        /// A head is being read (or awaited on a new connection).
        case head(since: NIODeadline)
        /// A body is being read.
        case body(since: NIODeadline, received: Int)
        /// Every request read is complete; one is being answered.
        case answering
    }

    enum Verdict: Equatable {
        /// The head did not complete in time: answer 408 and close.
        case headTimeout
        /// The body arrived slower than the minimum rate: answer 408 and close.
        case bodyTooSlow
        /// Nothing happened on a keep-alive connection: close quietly.
        case idle
        /// The client stopped reading the answer: close (the upstream call is cancelled).
        case writeStalled
    }

    let limits: EdgeTimeouts
    private(set) var reading: Reading
    /// When a streamed answer's pending writes last made progress (`nil`: none is pending).
    private var writeProgressAt: NIODeadline?
    /// When the channel stopped being writable (its outbound buffer is over the high-water mark).
    private var unwritableSince: NIODeadline?

    init(limits: EdgeTimeouts, now: NIODeadline) {
        self.limits = limits
        self.reading = .head(since: now)
    }

    /// Bytes of a request arrived.
    mutating func bytesArrived(_ count: Int, now: NIODeadline) {
        switch reading {
        case .idle, .answering: reading = .head(since: now)
        case .body(let since, let received): reading = .body(since: since, received: received + count)
        case .head: break
        }
    }

    /// A head was parsed; its body (if any) follows.
    mutating func headComplete(now: NIODeadline) {
        reading = .body(since: now, received: 0)
    }

    /// A whole request was read, and there is no partial request behind it.
    mutating func requestComplete(leftoverBytes: Bool, now: NIODeadline) {
        reading = leftoverBytes ? .head(since: now) : .answering
    }

    /// Every request read has been answered.
    mutating func allAnswered(now: NIODeadline) {
        if case .answering = reading { reading = .idle(since: now) }
        writeProgressAt = nil
    }

    /// The streamed answer's writes: pending since their last progress, or none pending (`nil`).
    mutating func writeStalled(since: NIODeadline?) {
        writeProgressAt = since
    }

    mutating func writabilityChanged(writable: Bool, now: NIODeadline) {
        unwritableSince = writable ? nil : (unwritableSince ?? now)
    }

    func check(now: NIODeadline) -> Verdict? {
        if let since = writeProgressAt, now - since >= limits.write { return .writeStalled }
        if let since = unwritableSince, now - since >= limits.write { return .writeStalled }
        switch reading {
        case .idle(let since):
            return now - since >= limits.idle ? .idle : nil
        case .head(let since):
            return now - since >= limits.head ? .headTimeout : nil
        case .body(let since, let received):
            let elapsed = now - since
            guard elapsed >= limits.head else { return nil }
            // Bytes per second over the whole body so far, in integers: received / seconds < minimum.
            let required = Int64(limits.bodyMinimumBytesPerSecond) * elapsed.nanoseconds / 1_000_000_000
            return Int64(received) < required ? .bodyTooSlow : nil
        case .answering:
            return nil
        }
    }
}

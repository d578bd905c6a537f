/// One deployment's circuit breaker: the error ratio over a sliding window opens it; after `openFor` a few probes
/// are let through (half-open), and they close it when all succeed or open it again at the first failure. A value
/// with time passed in (nanoseconds); the I/O shell asks `allow` before an attempt and reports each outcome.
public struct CircuitBreaker: Sendable, Hashable {
    public struct Settings: Sendable, Hashable {
        /// The window the error ratio is taken over, in `buckets` slices (it slides a slice at a time).
        public var window: Int64
        public var buckets: Int
        /// The share of failed attempts in the window that opens the breaker…
        public var failureRatio: Double
        /// …once the window holds at least this many attempts (a single failure of two is not an outage).
        public var minimumAttempts: Int
        /// How long it stays open before probing.
        public var openFor: Int64
        /// Probes let through half-open; all must succeed to close it.
        public var probes: Int

        public init(window: Int64 = 10_000_000_000, buckets: Int = 10, failureRatio: Double = 0.5, minimumAttempts: Int = 20,
                    openFor: Int64 = 30_000_000_000, probes: Int = 3) {
            self.window = max(window, 1)
            self.buckets = min(max(buckets, 1), 1000)
            self.failureRatio = failureRatio.isFinite ? min(max(failureRatio, 0), 1) : 0.5
            self.minimumAttempts = max(minimumAttempts, 1)
            self.openFor = max(openFor, 0)
            self.probes = max(probes, 1)
        }
    }

    public enum State: Sendable, Hashable {
        case closed
        /// Refusing until `until`.
        case open(until: Int64)
        /// `started` probes let through since `since`, `succeeded` of them back and well.
        case halfOpen(started: Int, succeeded: Int, since: Int64)

        public var name: String {
            switch self {
            case .closed: "closed"
            case .open: "open"
            case .halfOpen: "half_open"
            }
        }
    }

    public let settings: Settings
    public private(set) var state: State = .closed
    /// Per slice of the window: its index (time / slice length), successes and failures.
    private var slices: [Slice]

    private struct Slice: Sendable, Hashable {
        var index: Int64 = .min
        var successes = 0
        var failures = 0
    }

    public init(settings: Settings = Settings()) {
        self.settings = settings
        slices = Array(repeating: Slice(), count: settings.buckets)
    }

    private var sliceLength: Int64 { max(settings.window / Int64(settings.buckets), 1) }

    /// Whether an attempt may be made now (a half-open breaker counts it as a probe).
    public mutating func allow(now: Int64) -> Bool {
        switch state {
        case .closed:
            return true
        case .open(let until):
            guard now >= until else { return false }
            state = .halfOpen(started: 1, succeeded: 0, since: now)
            return true
        case .halfOpen(let started, let succeeded, let since):
            // Probes that never reported (their requests were cancelled) do not hold the breaker half-open forever:
            // after another `openFor`, a fresh set is let through.
            if now - since >= max(settings.openFor, 1) {
                state = .halfOpen(started: 1, succeeded: 0, since: now)
                return true
            }
            guard started < settings.probes else { return false }
            state = .halfOpen(started: started + 1, succeeded: succeeded, since: since)
            return true
        }
    }

    /// An attempt's outcome (only failures that say the deployment is unwell count as failures: not an invalid
    /// request).
    public mutating func record(success: Bool, now: Int64) {
        switch state {
        case .open:
            // A late answer of an attempt let through before the breaker opened: the window starts again anyway.
            return
        case .halfOpen(let started, let succeeded, let since):
            if !success {
                open(now: now)
            } else if succeeded + 1 >= settings.probes {
                state = .closed
                slices = Array(repeating: Slice(), count: settings.buckets)
            } else {
                state = .halfOpen(started: started, succeeded: succeeded + 1, since: since)
            }
        case .closed:
            let index = now / sliceLength
            let position = Int(((index % Int64(settings.buckets)) + Int64(settings.buckets)) % Int64(settings.buckets))
            if slices[position].index != index { slices[position] = Slice(index: index) }
            if success { slices[position].successes += 1 } else { slices[position].failures += 1 }
            guard !success else { return }
            let (successes, failures) = counts(now: now)
            let total = successes + failures
            if total >= settings.minimumAttempts, Double(failures) >= settings.failureRatio * Double(total) { open(now: now) }
        }
    }

    /// Another instance opened this deployment's breaker until `until`: this one refuses too, as long (never
    /// shorter than its own). Returns whether the state changed.
    public mutating func adoptOpen(until: Int64, now: Int64) -> Bool {
        guard until > now else { return false }
        if case .open(let own) = state, own >= until { return false }
        state = .open(until: until)
        slices = Array(repeating: Slice(), count: settings.buckets)
        return true
    }

    /// Successes and failures in the window ending at `now`.
    public func counts(now: Int64) -> (successes: Int, failures: Int) {
        let current = now / sliceLength
        var successes = 0, failures = 0
        for slice in slices where slice.index > current - Int64(settings.buckets) && slice.index <= current {
            successes += slice.successes
            failures += slice.failures
        }
        return (successes, failures)
    }

    private mutating func open(now: Int64) {
        let (until, overflow) = now.addingReportingOverflow(settings.openFor)
        state = .open(until: overflow ? .max : until)
        slices = Array(repeating: Slice(), count: settings.buckets)
    }
}

public import Histogram
import Synchronization
import SwitchyardCore

/// What a load run measured. Thread-safe: every request task records into it.
///
/// Latencies are kept in HdrHistograms of microseconds (three significant digits), output speed in tokens per
/// second × 1000. Open-loop latencies start at the request's intended send time, not its actual one, so a
/// generator or server that falls behind shows up as latency instead of hiding it (coordinated omission).
public final class LoadStatistics: Sendable {
    public struct Snapshot: Sendable {
        public var latency = Histogram<UInt64>(highestTrackableValue: 3_600_000_000)
        public var timeToFirstToken = Histogram<UInt64>(highestTrackableValue: 3_600_000_000)
        public var tokensPerSecond = Histogram<UInt64>(highestTrackableValue: 100_000_000)
        public var sent = 0
        public var succeeded = 0
        /// By class: `429`, `4xx`, `5xx`, `timeout`, `transport`, `stream-cut`, `unfinished` (cancelled at the end of the run).
        public var errors: [String: Int] = [:]
        /// Answers to recorded prompts (`RecordedPrompts`): those recognised as a recorded answer, and the correct ones.
        public var graded = 0
        public var correct = 0
        /// Answers to recorded prompts that matched neither recorded answer.
        public var ungraded = 0
        /// By the gateway's `x-switchyard-cache` value (`hit-exact`, `miss`, ...).
        public var cache: [String: Int] = [:]
        public var outputTokens = 0
        /// Summed from the gateway's `x-switchyard-cost-usd` (or the stream's end-of-stream cost), in nano-USD.
        public var costNanoUSD: Int64 = 0
        /// Requests whose cost was known.
        public var priced = 0
        /// Completed requests per elapsed second, and errors per second (for the report's charts).
        public var completedPerSecond: [Int] = []
        public var errorsPerSecond: [Int] = []
        /// Answers served from a cache (`x-switchyard-cache: hit-*`) and the cost recorded, per elapsed second.
        public var cacheHitsPerSecond: [Int] = []
        public var costNanoUSDPerSecond: [Int64] = []
        /// p50 and p99 of the latency of each second's completions, in microseconds.
        public var secondLatencies: [Histogram<UInt64>] = []

        public var errorCount: Int { errors.values.reduce(0, +) }
        /// Per value of the plan's group header (a tier, say): what was served, degraded and refused.
        public var groups: [String: Group] = [:]
    }

    /// What one group of requests got.
    public struct Group: Sendable, Equatable {
        /// Answered (200) without degradation, cache hits included.
        public var served = 0
        public var cacheHits = 0
        /// Answered after a limit refused them, by `x-switchyard-degraded` kind.
        public var degraded: [String: Int] = [:]
        /// 429s.
        public var refused = 0
        /// Any other failure.
        public var failed = 0
        /// Of the answered requests (served or degraded), in microseconds.
        public var latency = Histogram<UInt64>(highestTrackableValue: 3_600_000_000)
        /// The elapsed second of the run its last answer came in (-1: none).
        public var lastAnswer = -1

        public var total: Int { served + degraded.values.reduce(0, +) + refused + failed }

        public init(served: Int = 0, cacheHits: Int = 0, degraded: [String: Int] = [:], refused: Int = 0, failed: Int = 0) {
            self.served = served
            self.cacheHits = cacheHits
            self.degraded = degraded
            self.refused = refused
            self.failed = failed
        }
    }

    private let state = Mutex(Snapshot())

    public init() {}

    public var snapshot: Snapshot { state.withLock { $0 } }

    public func sent() { state.withLock { $0.sent += 1 } }

    /// The grade of an answer to a recorded prompt: right, wrong, or not one of the recorded answers (nil).
    public func grade(_ correct: Bool?) {
        state.withLock { state in
            guard let correct else { state.ungraded += 1; return }
            state.graded += 1
            if correct { state.correct += 1 }
        }
    }

    /// One finished request.
    /// - Parameters:
    ///   - second: The elapsed second of the run it finished in.
    ///   - error: Its error class, or nil on success.
    ///   - group: The request's group (the plan's group header's value), if it has one.
    ///   - degraded: The answer's `x-switchyard-degraded`.
    public func record(second: Int, latency: Duration, timeToFirstToken: Duration? = nil, outputTokens: Int = 0,
                       tokensPerSecond: Double? = nil, error: String? = nil, cache: String? = nil, costUSD: Double? = nil,
                       group: String? = nil, degraded: String? = nil) {
        state.withLock { s in
            if let group {
                if error == "429" {
                    s.groups[group, default: Group()].refused += 1
                } else if error != nil {
                    s.groups[group, default: Group()].failed += 1
                } else {
                    if let degraded {
                        s.groups[group, default: Group()].degraded[degraded, default: 0] += 1
                    } else {
                        s.groups[group, default: Group()].served += 1
                        if cache?.hasPrefix("hit") == true { s.groups[group, default: Group()].cacheHits += 1 }
                    }
                    _ = s.groups[group, default: Group()].latency.record(UInt64(max(0, latency.microseconds)))
                    s.groups[group, default: Group()].lastAnswer = max(s.groups[group, default: Group()].lastAnswer, second)
                }
            }
            while s.completedPerSecond.count <= second {
                s.completedPerSecond.append(0)
                s.errorsPerSecond.append(0)
                s.cacheHitsPerSecond.append(0)
                s.costNanoUSDPerSecond.append(0)
                s.secondLatencies.append(Histogram<UInt64>(highestTrackableValue: 3_600_000_000))
            }
            let micros = UInt64(max(0, latency.microseconds))
            _ = s.latency.record(micros)
            _ = s.secondLatencies[second].record(micros)
            s.completedPerSecond[second] += 1
            if let error {
                s.errors[error, default: 0] += 1
                s.errorsPerSecond[second] += 1
                return
            }
            s.succeeded += 1
            s.outputTokens += outputTokens
            if let timeToFirstToken { _ = s.timeToFirstToken.record(UInt64(max(0, timeToFirstToken.microseconds))) }
            if let tokensPerSecond, tokensPerSecond.isFinite { _ = s.tokensPerSecond.record(UInt64(max(0, tokensPerSecond * 1000))) }
            if let cache {
                s.cache[cache, default: 0] += 1
                if cache.hasPrefix("hit") { s.cacheHitsPerSecond[second] += 1 }
            }
            if let costUSD {
                let nano = Int64((costUSD * 1e9).rounded())
                s.costNanoUSD += nano
                s.costNanoUSDPerSecond[second] += nano
                s.priced += 1
            }
        }
    }
}


/// When an open-loop run sends each request: a constant rate, or steps of rates, each for its own duration.
public struct ArrivalSchedule: Sendable, Hashable {
    public struct Step: Sendable, Hashable {
        public var rate: Double
        public var duration: Duration
        public init(rate: Double, duration: Duration) {
            self.rate = rate
            self.duration = duration
        }
    }

    public var steps: [Step]

    public init(steps: [Step]) { self.steps = steps }

    public static func constant(rate: Double, duration: Duration) -> ArrivalSchedule {
        ArrivalSchedule(steps: [Step(rate: rate, duration: duration)])
    }

    /// A linear ramp from `from` to `to` requests/s, in one-second steps.
    public static func ramp(from: Double, to: Double, duration: Duration) -> ArrivalSchedule {
        let seconds = max(1, Int(duration.components.seconds))
        return ArrivalSchedule(steps: (0..<seconds).map { index in
            Step(rate: from + (to - from) * (Double(index) + 0.5) / Double(seconds), duration: .seconds(1))
        })
    }

    public var duration: Duration { steps.reduce(.zero) { $0 + $1.duration } }

    /// The intended send times, as offsets from the start: evenly spaced within each step.
    public func sendTimes() -> [Duration] {
        var times: [Duration] = []
        var stepStart = Duration.zero
        for step in steps {
            let count = Int((max(0, step.rate) * step.duration.inSeconds).rounded())
            let interval = step.duration / max(count, 1)
            for index in 0..<count { times.append(stepStart + interval * index) }
            stepStart += step.duration
        }
        return times
    }
}

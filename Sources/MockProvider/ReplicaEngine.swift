/// A self-hosted replica as a GPU server under continuous batching behaves, for the mock's `--replica` mode: at most
/// `maxSequences` requests run at once and the rest wait in a queue (first come, first served); the engine either
/// prefills (one prompt at a time, at `prefillTokensPerSecond`, the running sequences' decoding paused meanwhile, as
/// vLLM schedules a prefill step) or decodes every running sequence together, `decodeTokensPerSecond` shared among
/// them and each at most `sequenceTokensPerSecond`. So the time to first token is the queue wait plus the prefills
/// ahead plus its own, and it grows with load: long prompts hold up everyone behind them.
///
/// A value with time passed in (nanoseconds): `advance(to:)` runs the model up to a time; the server asks how many
/// tokens a request has so far. Deterministic; tested alone.
public struct ReplicaEngine: Sendable {
    public struct Settings: Sendable, Hashable {
        public var maxSequences: Int
        public var prefillTokensPerSecond: Double
        public var decodeTokensPerSecond: Double
        public var sequenceTokensPerSecond: Double
        /// Requests waiting beyond the running ones; past it a request is refused (the server answers 503).
        public var maxQueue: Int

        public init(maxSequences: Int = 8, prefillTokensPerSecond: Double = 8000, decodeTokensPerSecond: Double = 600,
                    sequenceTokensPerSecond: Double = 60, maxQueue: Int = 512) {
            func positive(_ value: Double, _ fallback: Double) -> Double { value.isFinite && value > 0 ? value : fallback }
            self.maxSequences = min(max(maxSequences, 1), 100_000)
            self.prefillTokensPerSecond = positive(prefillTokensPerSecond, 8000)
            self.decodeTokensPerSecond = positive(decodeTokensPerSecond, 600)
            self.sequenceTokensPerSecond = positive(sequenceTokensPerSecond, 60)
            self.maxQueue = min(max(maxQueue, 0), 1_000_000)
        }
    }

    struct Sequence: Sendable {
        var id: UInt64
        /// Prompt tokens still to prefill.
        var prefill: Double
        var output: Int
        var produced: Double = 0
    }

    public let settings: Settings
    public private(set) var now: Int64
    private var running: [Sequence] = []
    private var waiting: [Sequence] = []
    private var waitingStart = 0
    /// Tokens produced by requests still known (running or finished and not yet removed); finished ones hold their
    /// whole output.
    private var finished: [UInt64: Int] = [:]

    public init(settings: Settings = Settings(), now: Int64 = 0) {
        self.settings = settings
        self.now = now
    }

    /// Seconds of sequences in flight (prefilling or decoding), summed: over elapsed time and `maxSequences`, how
    /// full the replica was.
    public private(set) var sequenceSeconds: Double = 0
    /// Seconds the replica was computing (a prefill or a decode step), not idle.
    public private(set) var busySeconds: Double = 0
    /// Seconds of its capacity used: a prefill step uses all of it, a decode step the share of the decode throughput
    /// its sequences take. Over elapsed time: the utilisation.
    public private(set) var workSeconds: Double = 0

    public var runningCount: Int { running.count }
    public var waitingCount: Int { waiting.count - waitingStart }

    /// A request arrives; false when the queue is full (refused). `outputTokens` at least 1.
    public mutating func submit(id: UInt64, promptTokens: Int, outputTokens: Int, now: Int64) -> Bool {
        advance(to: now)
        guard waitingCount < settings.maxQueue || running.count < settings.maxSequences else { return false }
        waiting.append(Sequence(id: id, prefill: Double(max(promptTokens, 0)), output: max(outputTokens, 1)))
        admit()
        return true
    }

    /// Output tokens `id` has produced by now (nil: unknown, or removed). Its first token comes when its prefill
    /// is done.
    public func produced(_ id: UInt64) -> Int? {
        if let done = finished[id] { return done }
        if let sequence = running.first(where: { $0.id == id }) {
            return sequence.prefill > 0 ? 0 : min(sequence.output, max(1, Int(sequence.produced.rounded(.down))))
        }
        return waiting[waitingStart...].contains { $0.id == id } ? 0 : nil
    }

    /// Whether `id` has produced all its tokens (or is not known: nothing to wait for).
    public func isFinished(_ id: UInt64) -> Bool { finished[id] != nil || produced(id) == nil }

    /// Forgets a request (done and answered, or its client went away): a running one frees its place.
    public mutating func remove(_ id: UInt64) {
        finished[id] = nil
        running.removeAll { $0.id == id }
        if let index = waiting[waitingStart...].firstIndex(where: { $0.id == id }) { waiting.remove(at: index) }
        admit()
    }

    /// Runs the model from its time to `time`, piece by piece: a piece ends when a prefill or a sequence ends.
    public mutating func advance(to time: Int64) {
        var left = Double(max(time - now, 0)) / 1e9
        now = max(now, time)
        while left > 0, !running.isEmpty {
            if let index = running.firstIndex(where: { $0.prefill > 0 }) {
                // A prefill step: this prompt only, the others' decoding paused.
                let needed = running[index].prefill / settings.prefillTokensPerSecond
                let spent = min(needed, left)
                running[index].prefill = spent >= needed ? 0 : running[index].prefill - spent * settings.prefillTokensPerSecond
                if running[index].prefill == 0 { running[index].produced = 1 }
                account(spent, share: 1)
                left -= spent
                finish()
                continue
            }
            // Decoding: every running sequence, the throughput shared.
            let rate = min(settings.sequenceTokensPerSecond, settings.decodeTokensPerSecond / Double(running.count))
            let untilNextEnd = running.map { Double($0.output) - $0.produced }.min().map { max($0, 0) / rate } ?? left
            let spent = min(untilNextEnd, left)
            for index in running.indices { running[index].produced += spent * rate }
            account(spent, share: min(1, rate * Double(running.count) / settings.decodeTokensPerSecond))
            left -= spent
            finish()
        }
    }

    private mutating func account(_ seconds: Double, share: Double) {
        busySeconds += seconds
        workSeconds += seconds * share
        sequenceSeconds += seconds * Double(running.count)
    }

    /// Moves sequences that produced their output to `finished`, and admits waiting ones in their places.
    private mutating func finish() {
        var index = 0
        while index < running.count {
            if running[index].prefill == 0, running[index].produced >= Double(running[index].output) - 1e-9 {
                // Bounded: a request whose answer was never written (its client left first) is not removed; a
                // forgotten one reads as finished anyway (`produced` nil).
                if finished.count >= 10_000 { finished.removeAll(keepingCapacity: true) }
                finished[running[index].id] = running[index].output
                running.remove(at: index)
            } else {
                index += 1
            }
        }
        admit()
    }

    private mutating func admit() {
        while running.count < settings.maxSequences, waitingStart < waiting.count {
            running.append(waiting[waitingStart])
            waitingStart += 1
        }
        // Compacted now and then, so the queue's storage does not grow with every request ever queued.
        if waitingStart > 64, waitingStart * 2 > waiting.count {
            waiting.removeFirst(waitingStart)
            waitingStart = 0
        }
    }
}

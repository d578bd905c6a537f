import MockProvider
import Testing

/// The mock replica's model of continuous batching, on a clock passed in: queueing, prefills one at a time, decode
/// throughput shared, and a time to first token that grows with load as the model says.
@Suite struct ReplicaEngineTests {
    static let ms: Int64 = 1_000_000

    /// The first-token time of each of `count` identical requests submitted at once, stepping the clock 1 ms at a time.
    static func firstTokens(count: Int, settings: ReplicaEngine.Settings, prompt: Int = 100, output: Int = 10) -> [Int64] {
        var engine = ReplicaEngine(settings: settings)
        for id in 0..<count { _ = engine.submit(id: UInt64(id), promptTokens: prompt, outputTokens: output, now: 0) }
        var first = [Int64?](repeating: nil, count: count)
        var now: Int64 = 0
        while first.contains(where: { $0 == nil }), now < 600_000 * ms {
            now += ms
            engine.advance(to: now)
            for id in 0..<count where first[id] == nil && (engine.produced(UInt64(id)) ?? 0) >= 1 { first[id] = now }
        }
        return first.map { $0 ?? -1 }
    }

    @Test func oneSequenceAtATimeQueuesTheNext() {
        // 100 prompt tokens at 1,000 a second: 0.1 s of prefill; then 9 more tokens at 100 a second: done at 0.19 s.
        let settings = ReplicaEngine.Settings(maxSequences: 1, prefillTokensPerSecond: 1000, decodeTokensPerSecond: 100,
                                              sequenceTokensPerSecond: 100)
        var engine = ReplicaEngine(settings: settings)
        do { let admitted = engine.submit(id: 1, promptTokens: 100, outputTokens: 10, now: 0); #expect(admitted) }
        do { let admitted = engine.submit(id: 2, promptTokens: 100, outputTokens: 10, now: 0); #expect(admitted) }
        #expect(engine.runningCount == 1 && engine.waitingCount == 1)
        engine.advance(to: 99 * Self.ms)
        #expect(engine.produced(1) == 0)
        engine.advance(to: 100 * Self.ms)
        #expect(engine.produced(1) == 1 && engine.produced(2) == 0)
        engine.advance(to: 150 * Self.ms)
        #expect(engine.produced(1) == 6)
        engine.advance(to: 190 * Self.ms)
        #expect(engine.isFinished(1) && engine.produced(1) == 10)
        // The second starts when the first is done: its first token 0.1 s after that.
        engine.advance(to: 289 * Self.ms)
        #expect(engine.produced(2) == 0)
        engine.advance(to: 291 * Self.ms)
        #expect(engine.produced(2) == 1)
        engine.remove(1)
        #expect(engine.produced(1) == nil)
    }

    /// How full it was: two sequences in flight through two prefills (0.1 s each) and a shared decode (9 tokens each
    /// at 50 a second: 0.18 s), then idle.
    @Test func occupancyCountsSequencesInFlightAndBusyTime() {
        let settings = ReplicaEngine.Settings(maxSequences: 2, prefillTokensPerSecond: 1000, decodeTokensPerSecond: 100,
                                              sequenceTokensPerSecond: 100)
        var engine = ReplicaEngine(settings: settings)
        for id: UInt64 in 1...2 { _ = engine.submit(id: id, promptTokens: 100, outputTokens: 10, now: 0) }
        engine.advance(to: 1000 * Self.ms)
        #expect(engine.isFinished(1) && engine.isFinished(2))
        #expect(abs(engine.busySeconds - 0.38) < 1e-6, "\(engine.busySeconds)")
        #expect(abs(engine.sequenceSeconds - 0.76) < 1e-6, "\(engine.sequenceSeconds)")
        // The prefills use the whole replica; the decode, two sequences at 50 a second of 100, all of it too.
        #expect(abs(engine.workSeconds - 0.38) < 1e-6, "\(engine.workSeconds)")
        var single = ReplicaEngine(settings: settings)
        _ = single.submit(id: 1, promptTokens: 100, outputTokens: 10, now: 0)
        single.advance(to: 1000 * Self.ms)
        // 0.1 s of prefill, then 9 tokens at 100 a second using all 100 of the decode throughput.
        #expect(abs(single.workSeconds - 0.19) < 1e-6, "\(single.workSeconds)")
    }

    @Test func timeToFirstTokenGrowsWithConcurrencyAsTheModelSays() {
        let settings = ReplicaEngine.Settings(maxSequences: 4, prefillTokensPerSecond: 1000, decodeTokensPerSecond: 100,
                                              sequenceTokensPerSecond: 50)
        // Within the 4 places, prefills run one after another: the i-th first token at i × 0.1 s.
        #expect(Self.firstTokens(count: 1, settings: settings) == [100 * Self.ms])
        #expect(Self.firstTokens(count: 4, settings: settings) == [100, 200, 300, 400].map { $0 * Self.ms })
        // Beyond them the rest wait for a place: 4 decoding together share 100 tokens a second (25 each), so the
        // first four finish their 9 remaining tokens 0.36 s after the last prefill; only then do the next prefill.
        let eight = Self.firstTokens(count: 8, settings: settings)
        #expect(Array(eight.prefix(4)) == [100, 200, 300, 400].map { $0 * Self.ms })
        #expect(eight[4] > 700 * Self.ms, "\(eight)")
        let means = [1, 4, 8, 16].map { count in Self.firstTokens(count: count, settings: settings).reduce(0, +) / Int64(count) }
        #expect(zip(means, means.dropFirst()).allSatisfy { $0 < $1 }, "\(means)")
    }

    @Test func aFullQueueRefusesAndRemovedRequestsFreeTheirPlace() {
        var engine = ReplicaEngine(settings: .init(maxSequences: 1, maxQueue: 2))
        do { let admitted = engine.submit(id: 1, promptTokens: 10, outputTokens: 5, now: 0); #expect(admitted) }
        do { let admitted = engine.submit(id: 2, promptTokens: 10, outputTokens: 5, now: 0); #expect(admitted) }
        do { let admitted = engine.submit(id: 3, promptTokens: 10, outputTokens: 5, now: 0); #expect(admitted) }
        do { let admitted = engine.submit(id: 4, promptTokens: 10, outputTokens: 5, now: 0); #expect(!admitted) }
        // A client that left frees its place at once: the next waiting one runs.
        engine.remove(1)
        #expect(engine.runningCount == 1 && engine.waitingCount == 1)
        engine.remove(3)
        #expect(engine.waitingCount == 0 && engine.produced(3) == nil)
        // Hostile settings are clamped, never trusted.
        let odd = ReplicaEngine.Settings(maxSequences: -3, prefillTokensPerSecond: .nan, decodeTokensPerSecond: -1,
                                         sequenceTokensPerSecond: .infinity, maxQueue: -5)
        #expect(odd.maxSequences == 1 && odd.prefillTokensPerSecond == 8000 && odd.decodeTokensPerSecond == 600)
        #expect(odd.sequenceTokensPerSecond == 60 && odd.maxQueue == 0)
    }
}

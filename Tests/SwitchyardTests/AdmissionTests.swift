import Admission
import Testing

/// A deterministic generator (SplitMix64): the balancer's random draws, repeatable.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Retries, breakers and replica balancing as state machines: time and randomness passed in, no sleeps.
@Suite struct AdmissionTests {
    static let ms: Int64 = 1_000_000

    @Test func backoffIsExponentialWithFullJitterAndCapped() {
        let policy = RetryPolicy(maximumAttempts: 10, base: 100 * Self.ms, cap: 1000 * Self.ms)
        #expect((1...6).map { policy.ceiling(afterFailures: $0) } == [100, 200, 400, 800, 1000, 1000].map { $0 * Self.ms })
        // No overflow for any count, however large the base.
        #expect(RetryPolicy(base: .max / 2, cap: .max).ceiling(afterFailures: 70) == .max)
        #expect(policy.ceiling(afterFailures: 0) == 0)
        // The delay is the ceiling times the random draw: full jitter, from zero.
        for (unit, expected) in [(0.0, Int64(0)), (0.5, 100 * Self.ms), (0.75, 150 * Self.ms)] {
            var state = RetryState(policy: policy, deadline: nil)
            _ = state.afterFailure(.retryable, retryAfter: nil, now: 0, unit: 0.3)
            do { let got1 = state.afterFailure(.retryable, retryAfter: nil, now: 0, unit: unit); #expect(got1 == .retry(after: expected)) }
        }
        // A draw out of range (or not a number) is clamped, never trusted.
        var odd = RetryState(policy: policy, deadline: nil)
        do { let got1 = odd.afterFailure(.retryable, retryAfter: nil, now: 0, unit: .nan); #expect(got1 == .retry(after: 0)) }
        do { let got1 = odd.afterFailure(.retryable, retryAfter: nil, now: 0, unit: 7); #expect(got1 == .retry(after: 200 * Self.ms)) }
    }

    @Test func retryAfterIsHonouredAndBoundedAndTheDeadlineAndAttemptsStopRetries() {
        let policy = RetryPolicy(maximumAttempts: 3, base: 100 * Self.ms, cap: 1000 * Self.ms, maximumRetryAfter: 5000 * Self.ms)
        var state = RetryState(policy: policy, deadline: 10_000 * Self.ms)
        // The upstream's 2 s is longer than the jitter: waited for.
        do { let got1 = state.afterFailure(.retryable, retryAfter: 2000 * Self.ms, now: 0, unit: 0.9); #expect(got1 == .retry(after: 2000 * Self.ms)) }
        do { let got1 = state.afterFailure(.retryable, retryAfter: nil, now: 2000 * Self.ms, unit: 0.5); #expect(got1 == .retry(after: 100 * Self.ms)) }
        do { let got1 = state.afterFailure(.retryable, retryAfter: nil, now: 2200 * Self.ms, unit: 0.5); #expect(got1 == .stop(.attemptsExhausted)) }

        var long = RetryState(policy: policy, deadline: nil)
        do { let got1 = long.afterFailure(.retryable, retryAfter: 6000 * Self.ms, now: 0, unit: 0.5); #expect(got1 == .stop(.retryAfterTooLong)) }

        var late = RetryState(policy: policy, deadline: 1000 * Self.ms)
        do { let got1 = late.afterFailure(.retryable, retryAfter: 1500 * Self.ms, now: 0, unit: 0); #expect(got1 == .stop(.deadline)) }
        var edge = RetryState(policy: policy, deadline: 1000 * Self.ms)
        do { let got1 = edge.afterFailure(.retryable, retryAfter: nil, now: 999 * Self.ms, unit: 0.5); #expect(got1 == .stop(.deadline)) }
        var overflow = RetryState(policy: policy, deadline: .max)
        do { let got1 = overflow.afterFailure(.retryable, retryAfter: 10, now: .max - 5, unit: 0); #expect(got1 == .stop(.deadline)) }

        for failure in [AttemptFailure.deployment, .request] {
            var state = RetryState(policy: policy, deadline: nil)
            do { let got1 = state.afterFailure(failure, retryAfter: nil, now: 0, unit: 0.5); #expect(got1 == .stop(.notRetryable)) }
        }
    }

    @Test func upstreamStatusesAreClassified() {
        #expect([429, 500, 502, 503, 504, 529, 408].allSatisfy { AttemptFailure(status: $0) == .retryable })
        #expect([401, 403, 404].allSatisfy { AttemptFailure(status: $0) == .deployment })
        #expect([400, 413, 422, 0, 200, 1_000_000].allSatisfy { AttemptFailure(status: $0) == .request })
    }

    @Test func theBreakerOpensOnTheErrorRatioProbesAndCloses() {
        let settings = CircuitBreaker.Settings(window: 10_000 * Self.ms, buckets: 10, failureRatio: 0.5, minimumAttempts: 10,
                                               openFor: 5000 * Self.ms, probes: 2)
        var breaker = CircuitBreaker(settings: settings)
        // Five failures among five successes: 50% of ten attempts opens it, at the tenth.
        for index in 0..<9 {
            do { let got1 = breaker.allow(now: Int64(index) * Self.ms); #expect(got1) }
            breaker.record(success: index % 2 == 0, now: Int64(index) * Self.ms)
        }
        #expect(breaker.state == .closed)
        breaker.record(success: false, now: 9 * Self.ms)
        #expect(breaker.state == .open(until: 5009 * Self.ms))
        do { let got1 = breaker.allow(now: 5008 * Self.ms); #expect(!got1) }
        // Half-open: two probes, no third until they report.
        do { let got1 = breaker.allow(now: 5009 * Self.ms); #expect(got1) }
        do { let got1 = breaker.allow(now: 5010 * Self.ms); #expect(got1) }
        do { let got1 = breaker.allow(now: 5011 * Self.ms); #expect(!got1) }
        #expect(breaker.state.name == "half_open")
        breaker.record(success: true, now: 5020 * Self.ms)
        #expect(breaker.state.name == "half_open")
        breaker.record(success: true, now: 5021 * Self.ms)
        #expect(breaker.state == .closed)
        #expect(breaker.counts(now: 5021 * Self.ms) == (0, 0))

        // A failed probe opens it again for another period.
        var failing = CircuitBreaker(settings: settings)
        for index in 0..<10 { failing.record(success: false, now: Int64(index) * Self.ms) }
        do { let got1 = failing.allow(now: 6000 * Self.ms); #expect(got1) }
        failing.record(success: false, now: 6001 * Self.ms)
        #expect(failing.state == .open(until: 11_001 * Self.ms))
        // Probes that never report do not hold it half-open: after another period a fresh probe goes through.
        do { let got1 = failing.allow(now: 11_001 * Self.ms); let got2 = failing.allow(now: 11_002 * Self.ms); #expect(got1 && got2) }
        do { let got1 = failing.allow(now: 12_000 * Self.ms); #expect(!got1) }
        do { let got1 = failing.allow(now: 16_001 * Self.ms); #expect(got1) }
    }

    @Test func anOpeningFromElsewhereIsAdoptedOnlyWhenItLastsLonger() {
        var breaker = CircuitBreaker(settings: .init(minimumAttempts: 2, openFor: 10, probes: 1))
        let over = breaker.adoptOpen(until: 5, now: 5)
        #expect(!over, "already over")
        let first = breaker.adoptOpen(until: 20, now: 5)
        #expect(first && breaker.state == .open(until: 20))
        let shorter = breaker.adoptOpen(until: 15, now: 6)
        #expect(!shorter && breaker.state == .open(until: 20), "never shortened")
        let longer = breaker.adoptOpen(until: 30, now: 6)
        let early = breaker.allow(now: 29)
        #expect(longer && !early)
        let probe = breaker.allow(now: 30)
        #expect(probe && breaker.state.name == "half_open")
        // Half-open, a newer opening elsewhere stops the probing.
        let again = breaker.adoptOpen(until: 50, now: 31)
        let during = breaker.allow(now: 31)
        #expect(again && !during)
    }

    @Test func theBreakerWindowSlidesAndNeedsEnoughAttempts() {
        let settings = CircuitBreaker.Settings(window: 10_000 * Self.ms, buckets: 10, failureRatio: 0.5, minimumAttempts: 10)
        var breaker = CircuitBreaker(settings: settings)
        // Nine failures: under the minimum, however bad.
        for index in 0..<9 { breaker.record(success: false, now: Int64(index) * Self.ms) }
        #expect(breaker.state == .closed)
        // Eleven seconds later they have left the window: ten fresh attempts, four failures, stay closed.
        for index in 0..<10 { breaker.record(success: index >= 4, now: 11_000 * Self.ms + Int64(index) * Self.ms) }
        #expect(breaker.state == .closed)
        #expect(breaker.counts(now: 11_010 * Self.ms) == (6, 4))
        // Negative clock values (a clock before the epoch) slice correctly too.
        var early = CircuitBreaker(settings: settings)
        for index in 0..<10 { early.record(success: false, now: -5000 * Self.ms + Int64(index)) }
        #expect(early.state.name == "open")
    }

    @Test func powerOfTwoChoicesPrefersTheReplicaWithFewerOutstandingTokens() {
        var random = SeededGenerator(state: 7)
        var balancer = ReplicaBalancer(count: 2)
        // One long request on replica a: every short one after it goes to the other, as long as it has fewer tokens.
        let first = balancer.choose(tokens: 10_000, now: 0, using: &random)
        for _ in 0..<20 {
            do { let got1 = balancer.choose(tokens: 100, now: 0, using: &random); #expect(got1 != first) }
        }
        #expect(balancer.replicas[1 - first].outstandingTokens == 2000)
        #expect(balancer.replicas[1 - first].inFlight == 20)
        balancer.finished(first, tokens: 10_000, success: true, now: 1)
        #expect(balancer.replicas[first].outstandingTokens == 0 && balancer.replicas[first].inFlight == 0)
        do { let got1 = balancer.choose(tokens: 100, now: 2, using: &random); #expect(got1 == first) }

        // Least requests counts requests, not tokens: the long request's replica looks as free as the other.
        var counting = ReplicaBalancer(count: 2, settings: .init(policy: .leastRequests))
        let long = counting.choose(tokens: 10_000, now: 0, using: &random)
        do { let got1 = counting.choose(tokens: 100, now: 0, using: &random); #expect(got1 != long) }
        do { let got1 = counting.choose(tokens: 100, now: 0, using: &random); #expect(got1 == long) }

        var cycling = ReplicaBalancer(count: 3, settings: .init(policy: .roundRobin))
        var order: [Int] = []
        for _ in 0..<6 { order.append(cycling.choose(tokens: 1, now: 0, using: &random)) }
        #expect(order == [0, 1, 2, 0, 1, 2])
    }

    /// Comparing every replica always finds the least loaded; two drawn at random (power of two choices) miss it
    /// whenever neither is it. Work done (a stream's prompt read, output streamed) leaves the count before the end.
    @Test func allReplicasOrTwoAtRandomAreComparedAndProgressLeavesTheCount() throws {
        var random = SeededGenerator(state: 3)
        func loaded(_ settings: ReplicaBalancer.Settings) -> ReplicaBalancer {
            var balancer = ReplicaBalancer(count: 4, settings: settings)
            // Replicas hold 3,000, 2,000, 1,000 and 0 tokens (whichever indices they are).
            for tokens in [3000, 2000, 1000] as [Int64] {
                let index = balancer.choose(tokens: tokens, now: 0, using: &random)
                #expect(balancer.replicas[index].outstandingTokens == tokens)
            }
            return balancer
        }
        var all = loaded(.init())
        let idle = try #require(all.replicas.firstIndex { $0.outstandingTokens == 0 })
        for _ in 0..<20 {
            var copy = all
            let chosen = copy.choose(tokens: 10, now: 0, using: &random)
            #expect(chosen == idle)
        }
        var missed = 0
        for _ in 0..<200 {
            var pairs = loaded(.init())
            pairs.settings.choices = 2
            let before = pairs.replicas.map(\.outstandingTokens)
            let chosen = pairs.choose(tokens: 10, now: 0, using: &random)
            if before[chosen] != 0 { missed += 1 }
        }
        // A pair holds the idle replica with probability 1/2.
        #expect((60...140).contains(missed), "\(missed) of 200")
        // Progress: the prompt (900) leaves at the first token, the rest (100) at the end.
        let index = all.choose(tokens: 1000, now: 0, using: &random)
        #expect(index == idle && all.replicas[index].outstandingTokens == 1000)
        all.progressed(index, tokens: 900)
        #expect(all.replicas[index].outstandingTokens == 100 && all.replicas[index].inFlight == 1)
        all.finished(index, tokens: 100, success: true, now: 1)
        #expect(all.replicas[index].outstandingTokens == 0 && all.replicas[index].inFlight == 0)
    }

    @Test func consecutiveFailuresEjectAReplicaWhichComesBackInSlowStart() {
        var random = SeededGenerator(state: 1)
        let settings = ReplicaBalancer.Settings(ejectAfter: 3, ejectFor: 1000 * Self.ms, slowStart: 1000 * Self.ms)
        var balancer = ReplicaBalancer(count: 2, settings: settings)
        for index in 0..<3 { balancer.finished(0, tokens: 0, success: index == 3, now: 10 * Self.ms) }
        #expect(balancer.replicas[0].ejectedUntil == 1010 * Self.ms)
        // Ejected: never chosen, whatever the other holds.
        for _ in 0..<10 { let got1 = balancer.choose(tokens: 500, now: 500 * Self.ms, using: &random); #expect(got1 == 1) }
        // Back: in slow start it weighs 10% at first, so it takes a request only while the other holds ten times more.
        #expect(balancer.weight(0, now: 1010 * Self.ms) == 1)
        do { let got1 = balancer.choose(tokens: 100, now: 1010 * Self.ms, using: &random); #expect(got1 == 0, "(0 + 100) / 0.1 against 5,000 + 100") }
        do { let got1 = balancer.choose(tokens: 600, now: 1010 * Self.ms, using: &random); #expect(got1 == 1, "(100 + 600) / 0.1 against 5,000 + 600") }
        #expect(balancer.replicas[0].readmittedAt == 1010 * Self.ms)
        #expect(abs(balancer.weight(0, now: 1210 * Self.ms) - 0.2) < 1e-9)
        #expect(balancer.weight(0, now: 3000 * Self.ms) == 1)

        // A success clears the count: failures must be consecutive.
        var flaky = ReplicaBalancer(count: 2, settings: settings)
        for index in 0..<6 { flaky.finished(1, tokens: 0, success: index % 2 == 0, now: 0) }
        #expect(flaky.replicas[1].ejectedUntil == nil)
        // All ejected: the one due back first still serves (a request is never refused for want of a replica).
        var down = ReplicaBalancer(count: 2, settings: settings)
        for _ in 0..<3 { down.finished(1, tokens: 0, success: false, now: 0) }
        for _ in 0..<3 { down.finished(0, tokens: 0, success: false, now: 5 * Self.ms) }
        do { let got1 = down.choose(tokens: 1, now: 10 * Self.ms, using: &random); #expect(got1 == 1) }
        // An unknown replica's report is ignored.
        down.finished(9, tokens: 1, success: false, now: 0)
    }

    @Test func theOutputEstimateFollowsRealLengthsClippedByMaxTokens() {
        var estimate = OutputLengthEstimate(initial: 256)
        #expect(estimate.expected(maxTokens: 100) == 100)
        for _ in 0..<400 { estimate.observe(outputTokens: 40) }
        #expect(abs(estimate.mean - 40) < 1 && estimate.deviation < 1)
        #expect((40...42).contains(estimate.expected(maxTokens: 4096)))
        #expect(estimate.expected(maxTokens: 10) == 10)
        #expect(estimate.expected(maxTokens: nil) >= 40)
        estimate.observe(outputTokens: -5)
        #expect(estimate.expected(maxTokens: 0) == 1)
    }
}

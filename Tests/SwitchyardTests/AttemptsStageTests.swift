import Admission
import Limits
import Logging
import NIOCore
import Stages
import SwitchyardCore
import SwitchyardModels
import SwitchyardTestKit
import Testing

/// The attempts stage alone, with a scripted `next`, a fake clock and a recorded sleep: retries with backoff,
/// fallbacks in order, the breaker, one error naming every attempt.
@Suite struct AttemptsStageTests {
    static let price = ModelPrice(input: NanoUSD(usd: "1")!, output: NanoUSD(usd: "2")!, cacheRead: .zero, cacheWrite: .zero)
    static let primary = ModelRoute(name: "gpt-4o", provider: "openai-a", upstreamModel: "gpt-4o", price: price)
    static let second = ModelRoute(name: "gpt-4o", provider: "openai-b", upstreamModel: "gpt-4o", price: price)
    static let fallback = ModelRoute(name: "claude", provider: "anthropic", upstreamModel: "claude-sonnet-4-5",
                                     price: ModelPrice(input: NanoUSD(usd: "3")!, output: NanoUSD(usd: "15")!, cacheRead: .zero, cacheWrite: .zero))

    /// What the stage's environment saw: the routes of the attempts, and the sleeps.
    final class Script: Sendable {
        let outcomes: Locked<[GatewayError?]>
        let routes = Locked<[String]>([])
        let sleeps = Locked<[Int64]>([])
        let now = Locked<Int64>(0)
        let originals = Locked<[Bool]>([])
        /// How long each attempt takes on the clock.
        let cost: Int64

        init(_ outcomes: [GatewayError?], cost: Int64 = 0) {
            self.outcomes = Locked(outcomes)
            self.cost = cost
        }

        func next(_ request: ChatRequest, _ context: GatewayContext) throws -> GatewayResponse {
            routes.withLock { $0.append("\(context.route?.provider ?? "?")/\(context.route?.name ?? "?")") }
            originals.withLock { $0.append(context.original != nil) }
            now.withLock { $0 += cost }
            let outcome: GatewayError? = outcomes.withLock { list -> GatewayError? in list.isEmpty ? nil : list.removeFirst() }
            if let outcome { throw outcome }
            return .completion(Completion(response: ChatResponse(
                id: "x", model: "m", choices: [ChatChoice(content: [.text("ok")], stopReason: .endTurn)], usage: Usage(inputTokens: 1, outputTokens: 1))))
        }
    }

    /// `wallOffset`: the wall clock is the script's clock plus this (another instance's monotonic clock starts elsewhere).
    static func stage(_ script: Script, attempts: Int = 3, breaker: CircuitBreaker.Settings? = nil, budget: Int64 = 30_000_000_000,
                      board: (any BreakerBoard)? = nil, wallOffset: Int64 = 1_800_000_000_000_000_000) -> AttemptsStage
    {
        AttemptsStage(models: ["gpt-4o": primary, "claude": fallback], deployments: ["gpt-4o": [second]],
                      fallbacks: ["gpt-4o": ["claude"]],
                      settings: .init(retry: RetryPolicy(maximumAttempts: attempts, base: 100_000_000, cap: 1_000_000_000),
                                      budget: budget, breaker: breaker),
                      board: board, wallClock: { script.now.withLock { $0 } + wallOffset },
                      clock: { script.now.withLock { $0 } }, unit: { 0.5 },
                      sleep: { delay in script.sleeps.withLock { $0.append(delay) }; script.now.withLock { $0 += delay } })
    }

    static func run(_ stage: AttemptsStage, _ script: Script) async throws -> GatewayResponse {
        var context = GatewayContext(requestID: "r", logger: Logger(label: "t"), clientFormat: .openAI)
        context.route = primary
        let request = ChatRequest(model: "gpt-4o", messages: [ChatMessage(role: .user, content: [.text("hi")])], maxTokens: 10,
                                  sourceFormat: .openAI)
        context.original = ClientOriginal(request: request, body: .init())
        return try await stage.handle(request, context: context) { request, context in try script.next(request, context) }
    }

    static let unavailable = GatewayError(.upstreamError, "upstream 'openai-a' failed with status 503", upstreamStatus: 503)

    @Test func retryableFailuresAreRetriedWithBackoffAndRetryAfterHonoured() async throws {
        let limited = GatewayError(.rateLimited, "upstream is rate limiting", retryAfter: .seconds(2), upstreamStatus: 429)
        let script = Script([Self.unavailable, limited])
        let response = try await Self.run(Self.stage(script), script)
        guard case .completion = response else { throw GatewayError(.internalError, "no completion") }
        // Three attempts on the first deployment: after the first failure half of 100 ms, after the 429 its 2 s.
        #expect(script.routes.withLock { $0 } == ["openai-a/gpt-4o", "openai-a/gpt-4o", "openai-a/gpt-4o"])
        #expect(script.sleeps.withLock { $0 } == [50_000_000, 2_000_000_000])
    }

    /// A stream is returned once its first event arrived: a failure after that belongs to the stream (the client
    /// may have its first bytes already) and is never retried or sent elsewhere.
    @Test func noRetryAfterTheFirstByteOfAStream() async throws {
        let script = Script([])
        let calls = Locked(0)
        let stage = Self.stage(script)
        var context = GatewayContext(requestID: "r", logger: Logger(label: "t"), clientFormat: .openAI)
        context.route = Self.primary
        let request = ChatRequest(model: "gpt-4o", messages: [ChatMessage(role: .user, content: [.text("hi")])], maxTokens: 10,
                                  stream: true, sourceFormat: .openAI)
        let response = try await stage.handle(request, context: context) { _, _ in
            calls.withLock { $0 += 1 }
            return .stream(ChatStream(format: .openAI, next: { throw Self.unavailable }))
        }
        guard case .stream(let stream) = response else { throw GatewayError(.internalError, "no stream") }
        await #expect(throws: GatewayError.self) { for try await _ in stream {} }
        #expect(calls.withLock { $0 } == 1)
        #expect(script.sleeps.withLock { $0 }.isEmpty)
    }

    @Test func anInvalidRequestIsNeitherRetriedNorFallenBackFrom() async throws {
        let invalid = GatewayError(.invalidRequest, "upstream rejected the request", upstreamStatus: 400)
        let script = Script([invalid])
        await #expect(throws: invalid) { try await Self.run(Self.stage(script), script) }
        #expect(script.routes.withLock { $0 } == ["openai-a/gpt-4o"])
        #expect(script.sleeps.withLock { $0 }.isEmpty)
    }

    @Test func candidatesAreTriedInOrderAndTheFallbackIsItsOwnModel() async throws {
        // The first deployment does not serve the model (tried once), the second fails three times, the fallback answers.
        let missing = GatewayError(.modelNotFound, "upstream 'openai-a' does not serve model 'gpt-4o'", upstreamStatus: 404)
        let script = Script([missing, Self.unavailable, Self.unavailable, Self.unavailable])
        _ = try await Self.run(Self.stage(script), script)
        #expect(script.routes.withLock { $0 } == ["openai-a/gpt-4o", "openai-b/gpt-4o", "openai-b/gpt-4o", "openai-b/gpt-4o",
                                                  "anthropic/claude"])
        // The client's body goes only to the model it named, on its first deployment.
        #expect(script.originals.withLock { $0 } == [true, false, false, false, false])
    }

    @Test func whenEveryAttemptFailsOneErrorNamesThemAll() async throws {
        let script = Script(Array(repeating: Self.unavailable, count: 3 * 3))
        do {
            _ = try await Self.run(Self.stage(script), script)
            Issue.record("no error")
        } catch let error as GatewayError {
            #expect(error.code == .upstreamError && error.upstreamStatus == 503)
            #expect(error.message.hasPrefix("9 attempts failed: openai-a/gpt-4o: upstream 'openai-a' failed with status 503;"), "\(error.message)")
            #expect(error.message.contains("openai-b/gpt-4o:") && error.message.contains("anthropic/claude-sonnet-4-5:"))
        }
        #expect(script.routes.withLock { $0 }.count == 9)
    }

    @Test func theBudgetStopsRetriesAndFallbacks() async throws {
        // 1 s of budget, 600 ms per attempt: the 2 s retry-after is past it, so the next deployment is tried at once
        // (at 0.6 s); its backoff would start at 1.25 s, and the fallback at 1.2 s: neither is.
        let limited = GatewayError(.rateLimited, "upstream is rate limiting", retryAfter: .seconds(2), upstreamStatus: 429)
        let script = Script([limited, Self.unavailable, Self.unavailable], cost: 600_000_000)
        await #expect(throws: GatewayError.self) { try await Self.run(Self.stage(script, budget: 1_000_000_000), script) }
        #expect(script.routes.withLock { $0 } == ["openai-a/gpt-4o", "openai-b/gpt-4o"])
        #expect(script.sleeps.withLock { $0 }.isEmpty)
    }

    @Test func aSpentBudgetSendsTheRequestToTheNextDeploymentOrWaitsForRoom() async throws {
        let script = Script([])
        let wall = Locked<Int64>(1_000_000_000_000)
        let stage = AttemptsStage(
            models: ["gpt-4o": Self.primary], deployments: ["gpt-4o": [Self.second]], fallbacks: [:],
            settings: .init(retry: RetryPolicy(maximumAttempts: 1), budget: 90_000_000_000),
            budgets: [Self.primary.deploymentID: DeploymentBudget(requestsPerMinute: 2),
                      Self.second.deploymentID: DeploymentBudget(requestsPerMinute: 1)],
            store: LimitLedger(), admission: Self.admission(p0Deadline: .seconds(90)),
            wallClock: { wall.withLock { $0 } }, clock: { script.now.withLock { $0 } }, unit: { 0.5 },
            sleep: { delay in
                script.sleeps.withLock { $0.append(delay) }
                script.now.withLock { $0 += delay }
                wall.withLock { $0 += delay }
            })
        for _ in 0..<4 { _ = try await Self.run(stage, script) }
        // Two on the first deployment, the third on the second; the fourth finds both spent and waits on the last
        // candidate for its next unit (60 s at 1 a minute), within its priority's 90 s deadline.
        #expect(script.routes.withLock { $0 } == ["openai-a/gpt-4o", "openai-a/gpt-4o", "openai-b/gpt-4o", "openai-b/gpt-4o"])
        #expect(script.sleeps.withLock { $0 } == [60_000_000_000])
    }

    static func admission(p0Deadline: Duration) -> AdmissionSettings {
        var settings = AdmissionSettings()
        settings.deadlines[Priority.p0.rawValue] = p0Deadline
        return settings
    }

    /// Requests that find the budget spent wait in its queue and are granted in priority order as units come back
    /// (the wall clock the budget is kept on is moved by the test; the waits are short real sleeps).
    @Test func waitingRequestsGetTheBudgetInPriorityOrder() async throws {
        let wall = Locked<Int64>(1_000_000_000_000)
        let served = Locked<[String]>([])
        let origin = ContinuousClock.now
        let stage = AttemptsStage(
            models: ["gpt-4o": Self.primary], deployments: [:], fallbacks: [:],
            settings: .init(retry: RetryPolicy(maximumAttempts: 1)),
            budgets: [Self.primary.deploymentID: DeploymentBudget(requestsPerMinute: 6)], store: LimitLedger(),
            admission: Self.admission(p0Deadline: .seconds(60)),
            wallClock: { wall.withLock { $0 } }, clock: { (ContinuousClock.now - origin).nanoseconds },
            sleep: { delay in try await Task.sleep(for: .nanoseconds(min(delay, 1_000_000))) })
        func send(_ priority: Priority, tenant: String = "t") async throws {
            var context = GatewayContext(requestID: "r", logger: Logger(label: "t"), clientFormat: .openAI)
            context.route = Self.primary
            context.caller = Caller(tenant: tenant, user: tenant, keyID: tenant)
            context.requestedPriority = priority
            let request = ChatRequest(model: "gpt-4o", messages: [ChatMessage(role: .user, content: [.text("hi")])], maxTokens: 10,
                                      sourceFormat: .openAI)
            _ = try await stage.handle(request, context: context) { _, context in
                served.withLock { $0.append(context.priority.name) }
                return .completion(Completion(response: ChatResponse(
                    id: "x", model: "m", choices: [ChatChoice(content: [.text("ok")], stopReason: .endTurn)], usage: Usage(inputTokens: 1, outputTokens: 1))))
            }
        }
        // The burst of six the budget holds.
        for _ in 0..<6 { try await send(.p0) }
        func waiting() -> Int { stage.queueDepths().values.flatMap(\.values).reduce(0, +) }
        func eventually(_ condition: () -> Bool) async throws {
            for _ in 0..<5000 where !condition() { try await Task.sleep(for: .milliseconds(1)) }
            #expect(condition())
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (index, priority) in [Priority.p2, .p1, .p0, .p2, .p0].enumerated() {
                group.addTask { try await send(priority) }
                try await eventually { waiting() == index + 1 }
            }
            #expect(stage.queueDepths()[Self.primary.deploymentID] == [.p0: 2, .p1: 1, .p2: 2])
            // One unit every 10 s at 6 a minute: each goes to the head of the queue.
            for count in 7...11 {
                wall.withLock { $0 += 10_000_000_000 }
                try await eventually { served.withLock { $0.count } == count }
            }
            try await group.waitForAll()
        }
        #expect(served.withLock { Array($0.dropFirst(6)) } == ["p0", "p0", "p1", "p2", "p2"])
    }

    /// A request asking more tokens than the whole budget never fits: refused at once, not after its deadline.
    @Test func aRequestLargerThanTheWholeBudgetIsRefusedAtOnce() async throws {
        let script = Script([])
        let stage = AttemptsStage(
            models: ["gpt-4o": Self.primary], deployments: [:], fallbacks: [:],
            settings: .init(retry: RetryPolicy(maximumAttempts: 1)),
            budgets: [Self.primary.deploymentID: DeploymentBudget(tokensPerMinute: 5)], store: LimitLedger(),
            clock: { script.now.withLock { $0 } },
            sleep: { delay in script.sleeps.withLock { $0.append(delay) }; script.now.withLock { $0 += delay } })
        let error = await #expect(throws: GatewayError.self) { try await Self.run(stage, script) }
        #expect(error?.code == .queueTimeout)
        #expect(error?.retryAfter == .seconds(60))
        #expect(script.sleeps.withLock { $0 }.isEmpty)
        #expect(script.routes.withLock { $0 }.isEmpty)
    }

    @Test func anOpenBreakerSendsRequestsToTheNextCandidateUntilItsProbesSucceed() async throws {
        let breaker = CircuitBreaker.Settings(window: 10_000_000_000, buckets: 10, failureRatio: 0.5, minimumAttempts: 2,
                                              openFor: 5_000_000_000, probes: 1)
        // One attempt per deployment: two failures on the first deployment open its breaker.
        let script = Script([Self.unavailable, nil, Self.unavailable, nil])
        let stage = Self.stage(script, attempts: 1, breaker: breaker)
        _ = try await Self.run(stage, script)
        _ = try await Self.run(stage, script)
        #expect(stage.breakerStates()["openai-a/gpt-4o"]?.name == "open")
        #expect(stage.breakerStates()["openai-b/gpt-4o"] == .closed)
        // Open: the next request goes straight to the second deployment.
        _ = try await Self.run(stage, script)
        #expect(script.routes.withLock { $0 }.suffix(1) == ["openai-b/gpt-4o"])
        // After 5 s, one probe; it succeeds and closes the breaker.
        script.now.withLock { $0 += 5_000_000_000 }
        _ = try await Self.run(stage, script)
        #expect(script.routes.withLock { $0 }.suffix(1) == ["openai-a/gpt-4o"])
        #expect(stage.breakerStates()["openai-a/gpt-4o"] == .closed)
    }

    /// Instance A's breaker opens; instance B, which never saw a failure, reads the board and refuses the deployment
    /// for as long as A does (its own monotonic clock starts elsewhere), then probes it itself.
    @Test func anOpeningIsSharedThroughTheBoardForAsLongAsItLasts() async throws {
        let breaker = CircuitBreaker.Settings(window: 10_000_000_000, buckets: 10, failureRatio: 0.5, minimumAttempts: 2,
                                              openFor: 5_000_000_000, probes: 1)
        let board = InMemoryBreakerBoard()
        let scriptA = Script([Self.unavailable, nil, Self.unavailable, nil])
        let a = Self.stage(scriptA, attempts: 1, breaker: breaker, board: board)
        let scriptB = Script([])
        scriptB.now.withLock { $0 = 777_000_000_000 }
        let b = Self.stage(scriptB, attempts: 1, breaker: breaker, board: board, wallOffset: 1_800_000_000_000_000_000 - 777_000_000_000)
        await b.syncBreakers()
        #expect(b.breakerStates()["openai-a/gpt-4o"] == .closed, "nothing on the board yet")
        _ = try await Self.run(a, scriptA)
        _ = try await Self.run(a, scriptA)
        #expect(a.breakerStates()["openai-a/gpt-4o"]?.name == "open")
        // The opening is written in the background.
        var published: [String: Int64] = [:]
        for _ in 0..<200 where published.isEmpty {
            published = try await board.open(now: 1_800_000_000_000_000_000)
            if published.isEmpty { try await Task.sleep(for: .milliseconds(5)) }
        }
        #expect(published == ["openai-a/gpt-4o": 1_800_000_000_000_000_000 + 5_000_000_000])
        await b.syncBreakers()
        #expect(b.breakerStates()["openai-a/gpt-4o"] == .open(until: 777_000_000_000 + 5_000_000_000))
        _ = try await Self.run(b, scriptB)
        #expect(scriptB.routes.withLock { $0 } == ["openai-b/gpt-4o"], "B never tried the open deployment")
        // Until A's time is up; then B probes it.
        scriptB.now.withLock { $0 += 4_900_000_000 }
        await b.syncBreakers()
        _ = try await Self.run(b, scriptB)
        #expect(scriptB.routes.withLock { $0 }.last == "openai-b/gpt-4o")
        scriptB.now.withLock { $0 += 100_000_000 }
        _ = try await Self.run(b, scriptB)
        #expect(scriptB.routes.withLock { $0 }.last == "openai-a/gpt-4o")
        #expect(b.breakerStates()["openai-a/gpt-4o"] == .closed)
        // B's own closing does not shorten A's opening, and an expired board entry opens nothing.
        #expect(a.breakerStates()["openai-a/gpt-4o"]?.name == "open")
        await b.syncBreakers()
        #expect(b.breakerStates()["openai-a/gpt-4o"] == .closed)
    }
}

/// Through the gateway: a real upstream that fails is retried, then fallen back from to the mock; the answer says
/// which model served it, and the metrics count both.
@Suite struct AttemptsThroughTheGatewayTests {
    @Test func aFailingUpstreamIsRetriedThenFallenBackFromAndCounted() async throws {
        let script: HostileUpstream.Script = { request in
            // The first request is answered on its second attempt; the other one never.
            request.marker == "retried" && request.index == 1
                ? [.write(HostileUpstream.completion(request))]
                : [.write(HostileUpstream.error(503, headers: ""))]
        }
        try await HostileUpstreamTests.withUpstream(script, configure: { config in
            config.fallbacks["h"] = ["gpt-4o-mini"]
            config.resilience.maxAttempts = 2
            config.resilience.backoffBase = .milliseconds(1)
        }) { upstream, _, url in
            let retried = try await send("\(url)/v1/chat/completions", body: HostileUpstreamTests.body("retried"))
            #expect(retried.status == 200, "\(retried.body)")
            #expect(upstream.counts.withLock { $0.requests } == 2)
            let fellBack = try await send("\(url)/v1/chat/completions", body: HostileUpstreamTests.body("fallen"))
            #expect(fellBack.status == 200, "\(fellBack.body)")
            #expect(upstream.counts.withLock { $0.requests } == 4, "two attempts on the failing upstream, then the mock")
            #expect(fellBack.header("x-switchyard-cost-usd") != nil)
            let metrics = try await send("\(url)/metrics", method: "GET", contentType: nil).body
            #expect(metrics.contains(#"switchyard_upstream_retries_total{provider="hostile"} 2"#), "\(metrics.split(separator: "\n").filter { $0.contains("retries") })")
            #expect(metrics.contains(#"switchyard_upstream_fallbacks_total{model="h"} 1"#))
        }
    }

    /// The key path a configuration is refused at (nil: accepted).
    static func refusedPath(_ yaml: String) -> String? {
        do {
            _ = try ConfigLoader.parse(yaml: yaml, environment: [:])
            return nil
        } catch {
            return error.path
        }
    }

    @Test func resilienceDeploymentsAndFallbacksAreReadAndChecked() throws {
        let config = try ConfigLoader.parse(yaml: """
            providers: {a: {kind: mock}, b: {kind: mock}}
            models:
              gpt-4o: {provider: a, budget: {rpm: 500, tpm: 30000}, fallbacks: [gpt-4o-mini],
                       deployments: [{provider: b, upstream_model: gpt-4o-2024-08-06, budget: {input_tpm: 1000, output_tpm: 200}}]}
              gpt-4o-mini: {provider: b}
            resilience:
              retries: {max_attempts: 3, base_ms: 50, cap_ms: 2000, max_retry_after_seconds: 5, budget_seconds: 20}
              breaker: {window_seconds: 30, failure_ratio: 0.4, minimum_attempts: 10, open_seconds: 15, probes: 2}
            """, environment: [:])
        #expect(config.deployments["gpt-4o"]?.map(\.provider) == ["b"])
        #expect(config.deployments["gpt-4o"]?.first?.upstreamModel == "gpt-4o-2024-08-06")
        #expect(config.fallbacks["gpt-4o"] == ["gpt-4o-mini"])
        #expect(config.budgets["a/gpt-4o"] == DeploymentBudget(requestsPerMinute: 500, tokensPerMinute: 30000))
        #expect(config.budgets["b/gpt-4o-2024-08-06"] == DeploymentBudget(inputTokensPerMinute: 1000, outputTokensPerMinute: 200))
        #expect(config.resilience.maxAttempts == 3 && config.resilience.backoffBase == .milliseconds(50))
        #expect(config.resilience.budget == .seconds(20) && config.resilience.breaker?.probes == 2)
        #expect(config.resilience.breaker?.failureRatio == 0.4 && config.resilience.breaker?.openFor == .seconds(15))
        #expect(AttemptsStage.isNeeded(config))
        #expect(!AttemptsStage.isNeeded(try ConfigLoader.parse(yaml: "providers: {a: {kind: mock}}\nmodels: {gpt-4o-mini: {provider: a}}",
                                                               environment: [:])))
        let refusals = [
            ("models: {gpt-4o-mini: {provider: a, fallbacks: [nope]}}", "models.gpt-4o-mini.fallbacks"),
            ("models: {gpt-4o-mini: {provider: a, fallbacks: [gpt-4o-mini]}}", "models.gpt-4o-mini.fallbacks"),
            ("models: {gpt-4o-mini: {provider: a, deployments: [{provider: zz}]}}", "models.gpt-4o-mini.deployments[0].provider"),
            ("models: {gpt-4o-mini: {provider: a, deployments: [{provider: a, key: 1}]}}", "models.gpt-4o-mini.deployments[0].key"),
            ("models: {gpt-4o-mini: {provider: a}}\nresilience: {retries: {max_attempts: 0}}", "resilience.retries.max_attempts"),
            ("models: {gpt-4o-mini: {provider: a}}\nresilience: {breaker: {failure_ratio: 2}}", "resilience.breaker.failure_ratio"),
            ("models: {gpt-4o-mini: {provider: a}}\nresilience: {retry: {}}", "resilience.retry"),
            ("models: {gpt-4o-mini: {provider: a, budget: {}}}", "models.gpt-4o-mini.budget"),
            ("models: {gpt-4o-mini: {provider: a, budget: {rpm: 0}}}", "models.gpt-4o-mini.budget.rpm"),
            ("models: {gpt-4o-mini: {provider: a, budget: {rps: 3}}}", "models.gpt-4o-mini.budget.rps"),
        ]
        for refusal in refusals {
            #expect(Self.refusedPath("providers: {a: {kind: mock}}\n" + refusal.0) == refusal.1, "\(refusal.0)")
        }
    }
}

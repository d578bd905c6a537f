import Caching
import Embeddings
import Foundation
import Logging
import Routing
import Server
import Stages
import SwitchyardCore
import SwitchyardModels
import SwitchyardTestKit
import Testing

/// Routes: rules matched in order on the caller and the request, the model they pick, output limits, headers, and
/// the decision made only after the caches.
@Suite struct RoutingTests {
    static let yaml = """
        providers: {mock: {kind: mock}}
        models:
          gpt-4o-mini: {provider: mock}
          claude-haiku-4-5: {provider: mock}
          claude-sonnet-4-5: {provider: mock}
          claude-opus-4-1: {provider: mock}
        routes:
          support:
            max_tokens: {default: 300, cap: 1000}
            rules:
              - name: classify
                when: {feature: classification}
                model: claude-haiku-4-5
                max_tokens: {default: 16, cap: 64}
              - name: free
                when: {tier: [free, trial]}
                model: gpt-4o-mini
              - name: tools
                when: {tools: true, format: openai}
                model: claude-sonnet-4-5
              - name: long
                when: {prompt_tokens: {min: 1000}}
                model: claude-opus-4-1
              - name: default
                model: claude-sonnet-4-5
        """

    static func config() throws -> GatewayConfig {
        var config = try ConfigLoader.parse(yaml: Self.yaml, environment: [:])
        config.port = 0
        config.mockLatencyScale = 0
        return config
    }

    static func request(_ text: String = "hello", format: APIFormat = .openAI, maxTokens: Int? = nil,
                        tools: [ToolDefinition] = []) -> ChatRequest {
        ChatRequest(model: "support", messages: [ChatMessage(role: .user, content: [.text(text)])], tools: tools,
                    maxTokens: maxTokens, sourceFormat: format)
    }

    /// Runs the routing stage alone and returns the model and `max_tokens` it passed on, and the rule.
    static func decide(_ request: ChatRequest, caller: Caller) async throws -> (model: String?, maxTokens: Int?, rule: String?) {
        let config = try Self.config()
        let stage = RoutingStage(models: config.models)
        var context = GatewayContext(requestID: "r", logger: Logger(label: "t"), clientFormat: request.sourceFormat)
        context.caller = caller
        context.routeConfig = config.routes["support"]
        let seen = Locked<(String?, Int?)>((nil, nil))
        let response = try await stage.handle(request, context: context) { request, context in
            seen.withLock { $0 = (context.route?.name, request.maxTokens) }
            return .completion(Completion(response: ChatResponse(
                id: "x", model: "m", choices: [ChatChoice(content: [.text("ok")], stopReason: .endTurn)],
                usage: Usage(inputTokens: 1, outputTokens: 1))))
        }
        guard case .completion(let completion) = response else { return (nil, nil, nil) }
        let (model, maxTokens) = seen.withLock { $0 }
        #expect(completion.routing?.model.name == model)
        return (model, maxTokens, completion.routing?.rule)
    }

    /// The configuration is refused, naming `path`, with a message containing `message`.
    static func expectRefusal(_ yaml: String, path: String, message: String, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try ConfigLoader.parse(yaml: yaml, environment: [:])
            Issue.record("accepted: \(yaml)", sourceLocation: sourceLocation)
        } catch {
            #expect(error.path == path, "\(error)", sourceLocation: sourceLocation)
            #expect(error.message.contains(message), "\(error)", sourceLocation: sourceLocation)
        }
    }

    static let plain = Caller(tenant: "t", user: "u", tier: "paid", feature: "chat", keyID: "k")

    @Test func theFirstMatchingRuleWins() async throws {
        var classification = Self.plain
        classification.feature = "classification"
        classification.tier = "free"  // the feature rule comes first
        #expect(try await Self.decide(Self.request(), caller: classification).rule == "classify")
        var trial = Self.plain
        trial.tier = "trial"
        #expect(try await Self.decide(Self.request(), caller: trial).model == "gpt-4o-mini")
        let tool = ToolDefinition(name: "lookup", description: "find", inputSchema: ["type": "object"])
        #expect(try await Self.decide(Self.request(tools: [tool]), caller: Self.plain).rule == "tools")
        // The tools rule is for OpenAI clients only.
        #expect(try await Self.decide(Self.request(format: .anthropic, tools: [tool]), caller: Self.plain).rule == "default")
        let long = String(repeating: "word ", count: 900)  // 4,500 bytes: about 1,125 tokens
        #expect(try await Self.decide(Self.request(long), caller: Self.plain).model == "claude-opus-4-1")
        #expect(try await Self.decide(Self.request(), caller: Self.plain).rule == "default")
    }

    @Test func outputLimitsSetADefaultAndCap() async throws {
        var classification = Self.plain
        classification.feature = "classification"
        #expect(try await Self.decide(Self.request(), caller: classification).maxTokens == 16)
        #expect(try await Self.decide(Self.request(maxTokens: 1024), caller: classification).maxTokens == 64)
        #expect(try await Self.decide(Self.request(maxTokens: 20), caller: classification).maxTokens == 20)
        // The route's limit for rules without their own.
        #expect(try await Self.decide(Self.request(), caller: Self.plain).maxTokens == 300)
        #expect(try await Self.decide(Self.request(maxTokens: 5000), caller: Self.plain).maxTokens == 1000)
        #expect(OutputLimit(cap: 50).apply(to: nil) == 50)
        #expect(OutputLimit(defaultTokens: 10).apply(to: 4000) == 4000)
    }

    @Test(arguments: [
        ("routes: {r: {rules: [{model: nope}]}}", "routes.r.rules[0].model", "unknown model"),
        ("routes: {r: {rules: [{when: {tier: free}, model: gpt-4o-mini}]}}", "routes.r.rules", "last rule must have no 'when'"),
        ("routes: {r: {rules: [{model: gpt-4o-mini}, {model: gpt-4o-mini}]}}", "routes.r.rules[1]", "never reached"),
        ("routes: {gpt-4o-mini: {rules: [{model: gpt-4o-mini}]}}", "routes.gpt-4o-mini", "also a model"),
        ("routes: {r: {rules: [{model: gpt-4o-mini, max_tokens: {default: 90, cap: 10}}]}}",
         "routes.r.rules[0].max_tokens.default", "must not exceed cap"),
        ("routes: {r: {rules: [{when: {}, model: gpt-4o-mini}]}}", "routes.r.rules[0].when", "sets no condition"),
        ("routes: {r: {rules: [{when: {format: grpc}, model: gpt-4o-mini}, {model: gpt-4o-mini}]}}",
         "routes.r.rules[0].when.format", "openai or anthropic"),
        ("routes: {r: {rules: [{when: {prompt_tokens: {min: 9, max: 2}}, model: gpt-4o-mini}, {model: gpt-4o-mini}]}}",
         "routes.r.rules[0].when.prompt_tokens", "min must not exceed max"),
        ("routes: {r: {rules: [{when: {colour: red}, model: gpt-4o-mini}, {model: gpt-4o-mini}]}}",
         "routes.r.rules[0].when.colour", "unknown key"),
        ("routes: {r: {rules: []}}", "routes.r.rules", "is required"),
        ("routes: {r: {rules: [{model: r}]}}", "routes.r.rules[0].model", "is a route"),
        ("routes: {r: {rules: [{name: a/b, model: gpt-4o-mini}]}}", "routes.r.rules[0].name", "without spaces or '/'"),
    ])
    func badRoutesNameTheKeyPath(_ testCase: (String, String, String)) {
        let yaml = "providers: {mock: {kind: mock}}\nmodels: {gpt-4o-mini: {provider: mock}}\n" + testCase.0
        RoutingTests.expectRefusal(yaml, path: testCase.1, message: testCase.2)
    }

    // MARK: Through the gateway

    static func chat(_ stream: Bool = false, _ text: String = "route me") -> String {
        #"{"model":"support","stream":\#(stream),"messages":[{"role":"user","content":"\#(text)"}]}"#
    }

    static func messages(_ stream: Bool = false) -> String {
        // The text differs with `stream`: the exact cache serves a stream from a stored whole answer.
        #"{"model":"support","max_tokens":50,"stream":\#(stream),"messages":[{"role":"user","content":"route me \#(stream)"}]}"#
    }

    @Test func routedAnswersNameTheRuleAndTheModelInBothAPIsStreamedOrNot() async throws {
        try await withTestGateway(try Self.config()) { _, url in
            for stream in [false, true] {
                let openAI = try await send("\(url)/v1/chat/completions", body: Self.chat(stream, "openai \(stream)"))
                #expect(openAI.status == 200, "\(openAI.body)")
                #expect(openAI.header("x-switchyard-route") == "support/default/claude-sonnet-4-5")
                #expect(openAI.header("x-switchyard-model") == "claude-sonnet-4-5")
                let anthropic = try await send("\(url)/v1/messages", body: Self.messages(stream),
                                               headers: [("x-switchyard-feature", "classification")])
                #expect(anthropic.status == 200, "\(anthropic.body)")
                #expect(anthropic.header("x-switchyard-route") == "support/classify/claude-haiku-4-5")
                #expect(anthropic.header("x-switchyard-model") == "claude-haiku-4-5")
                if stream { #expect(anthropic.body.contains("message_stop")) }
            }
            // An explicit model name is not routed.
            let direct = try await send("\(url)/v1/chat/completions",
                                        body: #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#)
            #expect(direct.header("x-switchyard-route") == nil && direct.header("x-switchyard-model") == "gpt-4o-mini")
            let models = try await send("\(url)/v1/models", method: "GET")
            #expect(models.body.contains(#""id":"support""#))
        }
    }

    @Test func aCacheHitIsNotRoutedAndIsPricedAtTheModelThatServed() async throws {
        try await withTestGateway(try Self.config()) { _, url in
            let first = try await send("\(url)/v1/chat/completions", body: Self.chat(false, "cache me"))
            #expect(first.header("x-switchyard-route") == "support/default/claude-sonnet-4-5")
            let cost = try #require(first.header("x-switchyard-cost-usd").flatMap(Double.init))
            let usage = try #require(try JSONValue.parse(first.body)["usage"])
            let input = Double(usage["prompt_tokens"]?.intValue ?? 0), output = Double(usage["completion_tokens"]?.intValue ?? 0)
            // claude-sonnet-4-5: $3 / $15 per million tokens.
            #expect(abs(cost - (input * 3 + output * 15) / 1_000_000) < 1e-9, "\(cost) for \(input)/\(output)")
            let second = try await send("\(url)/v1/chat/completions", body: Self.chat(false, "cache me"))
            #expect(second.header("x-switchyard-cache") == "hit-exact")
            #expect(second.header("x-switchyard-route") == nil)
        }
    }

    @Test func theFeatureHeaderIsCheckedAndOnlyKeysThatAllowItUseIt() async throws {
        var config = try Self.config()
        config.keys = [
            APIKeyEntry(sha256: KeyHash.sha256Hex("sk-open"), caller: Caller(tenant: "a", user: "a", keyID: "open", featureFromHeader: true)),
            APIKeyEntry(sha256: KeyHash.sha256Hex("sk-fixed"), caller: Caller(tenant: "b", user: "b", feature: "chat", keyID: "fixed")),
        ]
        try await withTestGateway(config) { _, url in
            let header = ("x-switchyard-feature", "classification")
            let open = try await send("\(url)/v1/chat/completions", body: Self.chat(), headers: [("authorization", "Bearer sk-open"), header])
            #expect(open.header("x-switchyard-route") == "support/classify/claude-haiku-4-5")
            let fixed = try await send("\(url)/v1/chat/completions", body: Self.chat(), headers: [("authorization", "Bearer sk-fixed"), header])
            #expect(fixed.header("x-switchyard-route") == "support/default/claude-sonnet-4-5")
            let bad = try await send("\(url)/v1/chat/completions", body: Self.chat(),
                                     headers: [("authorization", "Bearer sk-open"), ("x-switchyard-feature", "no spaces please")])
            #expect(bad.status == 400)
            #expect(bad.body.contains("x-switchyard-feature"))
        }
    }
}

/// Complexity ladders: the classifier's percentile picks the step; the embedding is the semantic cache's when it
/// made one (one embedding per request); without a score the strongest model serves.
@Suite struct ComplexityRoutingTests {
    /// Embeds texts that say "hard" along the direction the synthetic classifier learnt as hard, and counts its calls.
    final class CountingEmbedder: TextEmbedder, Sendable {
        let calls = Locked(0)
        func embed(_ text: String) async -> [Float]? {
            calls.withLock { $0 += 1 }
            var vector = [Float](repeating: 0, count: ComplexityClassifier.embeddingDimension)
            // Four times the training data's offset: past every training prompt of its kind.
            vector[3] = text.contains("hard") ? 2 : -2
            vector[0] = 0.01
            return vector
        }
    }

    static let classifier: ComplexityClassifier = {
        let (examples, embeddings) = ComplexityClassifierTests.synthetic(count: 400)
        return ComplexityClassifier.train(examples, embeddings: embeddings, settings: LogisticRegression.Settings(iterations: 200))
    }()

    static let route = RouteConfig(name: "auto", rules: [
        RouteRule(name: "c", target: .complexity(models: ["gpt-4o-mini", "claude-sonnet-4-5", "claude-opus-4-1"], thresholds: [0.45, 0.5])),
    ])

    static func context() -> GatewayContext {
        var context = GatewayContext(requestID: "r", logger: Logger(label: "t"), clientFormat: .openAI)
        context.caller = Caller(tenant: "t", user: "u", keyID: "k")
        context.routeConfig = Self.route
        return context
    }

    static func request(_ text: String) -> ChatRequest {
        ChatRequest(model: "auto", messages: [ChatMessage(role: .user, content: [.text(text)])], sourceFormat: .openAI)
    }

    static func answer() -> GatewayResponse {
        .completion(Completion(response: ChatResponse(id: "x", model: "m", choices: [ChatChoice(content: [.text("ok")], stopReason: .endTurn)],
                                                      usage: Usage(inputTokens: 1, outputTokens: 1))))
    }

    static func routing(_ response: GatewayResponse) -> RoutingOutcome? {
        if case .completion(let completion) = response { return completion.routing }
        return nil
    }

    @Test func theScorePicksTheStepAndUnscoredRequestsGetTheStrongestModel() async throws {
        let models = try RoutingTests.config().models
        let embedder = CountingEmbedder()
        let stage = RoutingStage(models: models, classifier: Self.classifier, embedder: embedder)
        let hard = try await stage.handle(Self.request("a long hard question 1?"), context: Self.context()) { _, _ in Self.answer() }
        let easy = try await stage.handle(Self.request("easy 1"), context: Self.context()) { _, _ in Self.answer() }
        #expect(Self.routing(hard)?.decision == "claude-opus-4-1")
        #expect(Self.routing(easy)?.decision == "gpt-4o-mini")
        // The synthetic hard prompts are the top half of the training scores, the easy ones the bottom half.
        #expect((Self.routing(hard)?.complexity ?? 0) >= 0.5 && (Self.routing(easy)?.complexity ?? 1) < 0.45)
        // No embedder: nothing to score with.
        let blind = RoutingStage(models: models, classifier: Self.classifier, embedder: nil)
        let unscored = try await blind.handle(Self.request("easy 1"), context: Self.context()) { _, _ in Self.answer() }
        #expect(Self.routing(unscored)?.decision == "claude-opus-4-1" && Self.routing(unscored)?.complexity == nil)
    }

    @Test func theSemanticCachesEmbeddingIsReusedSoEachRequestIsEmbeddedOnce() async throws {
        let config = try RoutingTests.config()
        let embedder = CountingEmbedder()
        var settings = CacheSettings()
        settings.semanticEnabled = true
        let recorder = GatewayMetrics(models: ["auto"])
        let pipeline = Pipeline(stages: [
            SemanticCacheStage(store: InMemorySemanticCache(maxEntries: 100), embedder: embedder, settings: settings, recorder: recorder),
            RoutingStage(models: config.models, classifier: Self.classifier, embedder: embedder),
        ], terminal: { _, _ in Self.answer() })
        let first = try await pipeline.run(Self.request("a long hard question 2?"), context: Self.context())
        #expect(Self.routing(first)?.decision == "claude-opus-4-1")
        #expect(embedder.calls.withLock { $0 } == 1)
        // With the semantic cache off for this name, routing embeds the text itself: still once.
        settings.semanticOff = ["auto"]
        let alone = Pipeline(stages: [
            SemanticCacheStage(store: InMemorySemanticCache(maxEntries: 100), embedder: embedder, settings: settings, recorder: recorder),
            RoutingStage(models: config.models, classifier: Self.classifier, embedder: embedder),
        ], terminal: { _, _ in Self.answer() })
        _ = try await alone.run(Self.request("a long hard question 3?"), context: Self.context())
        #expect(embedder.calls.withLock { $0 } == 2)
    }

    @Test(arguments: [
        ("rules: [{complexity: {models: [gpt-4o-mini, nope], thresholds: [0.5]}}]", "routes.r.rules[0].complexity.models[1]", "unknown model"),
        ("rules: [{complexity: {models: [gpt-4o-mini, gpt-4o], thresholds: [0.5, 0.7]}}]", "routes.r.rules[0].complexity.thresholds", "one fewer"),
        ("rules: [{complexity: {models: [gpt-4o-mini, gpt-4o, gpt-4o-mini], thresholds: [0.7, 0.5]}}]",
         "routes.r.rules[0].complexity.thresholds[1]", "must ascend"),
        ("rules: [{complexity: {models: [gpt-4o-mini, gpt-4o], thresholds: [1.5]}}]", "routes.r.rules[0].complexity.thresholds[0]", "between 0 and 1"),
        ("rules: [{complexity: {models: [gpt-4o-mini], thresholds: []}}]", "routes.r.rules[0].complexity.models", "two or three"),
        ("rules: [{model: gpt-4o, complexity: {models: [gpt-4o-mini, gpt-4o], thresholds: [0.5]}}]", "routes.r.rules[0].model",
         "either model or complexity"),
    ])
    func badLaddersNameTheKeyPath(_ testCase: (String, String, String)) {
        let yaml = "providers: {mock: {kind: mock}}\nmodels: {gpt-4o-mini: {provider: mock}, gpt-4o: {provider: mock}}\nroutes:\n  r: {"
            + testCase.0 + "}"
        RoutingTests.expectRefusal(yaml, path: testCase.1, message: testCase.2)
    }

    @Test func theEmbeddedDefaultsAutoRouteScoresWithTheShippedClassifier() async throws {
        try await withTestGateway(embeddings: .model(directory: ModelStore().modelDirectory)) { _, url in
            func ask(_ text: String) async throws -> TestResponse {
                try await send("\(url)/v1/chat/completions", body: #"{"model":"auto","messages":[{"role":"user","content":"\#(text)"}]}"#)
            }
            let easy = try await ask("hi")
            let hard = try await ask("A train leaves at 3:15 pm travelling 62.5 miles per hour; a second leaves 40 minutes later at 75 mph. "
                                     + "After how many miles does the second catch the first, and what share of the trip is left if it is 410 miles?")
            for response in [easy, hard] {
                #expect(response.status == 200, "\(response.body)")
                let model = response.header("x-switchyard-model") ?? ""
                #expect(["claude-haiku-4-5", "claude-sonnet-4-5", "claude-opus-4-1"].contains(model))
                #expect(response.header("x-switchyard-route") == "auto/complexity/\(model)")
            }
            let easyScore = try #require(easy.header("x-switchyard-complexity").flatMap(Double.init))
            let hardScore = try #require(hard.header("x-switchyard-complexity").flatMap(Double.init))
            #expect(hardScore > easyScore, "\(hardScore) \(easyScore)")
        }
    }
}

/// Cascades: the cheap answer kept when the confidence in it (log-probabilities, else the answer scorer) reaches the
/// threshold, else the strong model; both calls priced.
@Suite struct CascadeRoutingTests {
    static let route = RouteConfig(name: "cascade", rules: [
        RouteRule(name: "c", target: .cascade(cheap: "gpt-4o-mini", strong: "claude-opus-4-1", threshold: 0.8)),
    ])

    static func context() -> GatewayContext {
        var context = ComplexityRoutingTests.context()
        context.routeConfig = Self.route
        return context
    }

    static func answer(_ text: String, logprob: Double?, cost: Int64) -> GatewayResponse {
        let logprobs: JSONValue? = logprob.map { value in ["content": .array([["token": "a", "logprob": .double(value)], ["token": "b", "logprob": .double(value)]])] }
        return .completion(Completion(response: ChatResponse(id: "x", model: "m", choices: [ChatChoice(content: [.text(text)], stopReason: .endTurn,
                                                                                                      logprobs: logprobs)],
                                                             usage: Usage(inputTokens: 1, outputTokens: 1)), cost: NanoUSD(cost)))
    }

    /// Runs the stage with a scripted cheap and strong model; returns the response and the requests each saw.
    static func run(_ request: ChatRequest, cheap: @escaping @Sendable () throws -> GatewayResponse) async throws
        -> (GatewayResponse, [(model: String, stream: Bool, logprobs: Bool?)])
    {
        let stage = RoutingStage(models: try RoutingTests.config().models, classifier: try ComplexityClassifier.bundled(),
                                 logprobModels: ["gpt-4o-mini"])
        let seen = Locked<[(model: String, stream: Bool, logprobs: Bool?)]>([])
        let response = try await stage.handle(request, context: Self.context()) { request, context in
            let model = context.route?.name ?? ""
            seen.withLock { $0.append((model, request.stream, request.logprobs)) }
            if model == "gpt-4o-mini" { return try cheap() }
            return Self.answer("strong answer", logprob: nil, cost: 1_000)
        }
        return (response, seen.withLock { $0 })
    }

    static func request(stream: Bool = false) -> ChatRequest {
        var request = ComplexityRoutingTests.request("What is 12 times 12?")
        request.model = "cascade"
        request.stream = stream
        return request
    }

    @Test func aConfidentCheapAnswerIsKeptWithoutTheLogprobsTheClientDidNotAskFor() async throws {
        let (response, seen) = try await Self.run(Self.request()) { Self.answer("144", logprob: -0.01, cost: 10) }
        #expect(seen.count == 1 && seen[0].model == "gpt-4o-mini" && seen[0].logprobs == true && !seen[0].stream)
        guard case .completion(let completion) = response else { Issue.record("not a completion"); return }
        #expect(completion.routing?.cascade?.accepted == true && completion.routing?.cascade?.source == "logprobs")
        #expect(completion.routing?.model.name == "gpt-4o-mini")
        #expect(try completion.canonicalResponse().choices.first?.logprobs == nil)
        #expect(completion.cost == NanoUSD(10))
    }

    @Test func anUnsureCheapAnswerEscalatesAndTheAnswerCostsBothCalls() async throws {
        let (response, seen) = try await Self.run(Self.request()) { Self.answer("maybe 140", logprob: -2, cost: 10) }
        #expect(seen.map(\.model) == ["gpt-4o-mini", "claude-opus-4-1"])
        guard case .completion(let completion) = response else { Issue.record("not a completion"); return }
        #expect(completion.routing?.cascade?.accepted == false)
        #expect(abs((completion.routing?.cascade?.confidence ?? 0) - 0.1353) < 0.001)
        #expect(completion.routing?.header == "cascade/c/claude-opus-4-1")
        #expect(completion.cost == NanoUSD(1_010))
    }

    @Test func logprobsFromAnUpstreamAreBoundedOrIgnored() {
        func logprobs(_ values: [JSONValue]) -> JSONValue { ["content": .array(values.map { ["token": "t", "logprob": $0] })] }
        #expect(AnswerScorer.confidence(logprobs: nil) == nil)
        #expect(AnswerScorer.confidence(logprobs: ["content": .array([])]) == nil)
        #expect(AnswerScorer.confidence(logprobs: ["content": "not a list"]) == nil)
        // Impossible values (a positive log-probability, NaN is not JSON but a huge number is) are left out.
        #expect(AnswerScorer.confidence(logprobs: logprobs([.double(5), .double(1e308), .string("x")])) == nil)
        let mixed = AnswerScorer.confidence(logprobs: logprobs([.double(-0.1), .double(7), .double(-1e308)]))
        #expect(mixed.map { $0 >= 0 && $0 <= 1 } == true, "\(String(describing: mixed))")
    }

    @Test func aFailedCheapCallEscalatesAndAStreamingClientGetsTheStrongStream() async throws {
        let (response, seen) = try await Self.run(Self.request(stream: true)) {
            throw GatewayError(.upstreamError, "down", upstreamStatus: 502)
        }
        #expect(seen.map(\.model) == ["gpt-4o-mini", "claude-opus-4-1"])
        #expect(seen.map(\.stream) == [false, true])
        if case .completion(let completion) = response {
            #expect(completion.routing?.cascade?.source == "failed")
        }
    }

    @Test func withoutLogprobsTheAnswerScorerDecidesAndAKeptAnswerStreamsFromTheWholeOne() async throws {
        let (response, _) = try await Self.run(Self.request(stream: true)) { Self.answer("12 × 12 = 144.\nThe answer is 144", logprob: nil, cost: 10) }
        switch response {
        case .stream(let stream):
            #expect(stream.routing?.cascade?.source == "scorer")
            #expect(stream.routing?.cascade?.accepted == true || stream.routing?.cascade?.accepted == false)
        case .completion(let completion):
            // Escalated: the scripted strong model answers whole.
            #expect(completion.routing?.cascade?.source == "scorer" && completion.routing?.cascade?.accepted == false)
        }
    }

    @Test func throughTheGatewayBothCallsArePricedInBothAPIs() async throws {
        var config = try RoutingTests.config()
        config.routes["keep"] = RouteConfig(name: "keep", rules: [
            RouteRule(name: "c", target: .cascade(cheap: "gpt-4o-mini", strong: "claude-sonnet-4-5", threshold: 0)),
        ])
        config.routes["escalate"] = RouteConfig(name: "escalate", rules: [
            RouteRule(name: "c", target: .cascade(cheap: "gpt-4o-mini", strong: "claude-sonnet-4-5", threshold: 1)),
        ])
        try await withTestGateway(config) { _, url in
            func ask(_ model: String) async throws -> TestResponse {
                try await send("\(url)/v1/chat/completions",
                               body: #"{"model":"\#(model)","messages":[{"role":"user","content":"Name three rivers in Europe."}]}"#)
            }
            let kept = try await ask("keep"), escalated = try await ask("escalate"), strong = try await ask("claude-sonnet-4-5")
            #expect(kept.header("x-switchyard-cascade") == "accepted" && kept.header("x-switchyard-model") == "gpt-4o-mini")
            #expect(escalated.header("x-switchyard-cascade") == "escalated" && escalated.header("x-switchyard-model") == "claude-sonnet-4-5")
            #expect(escalated.header("x-switchyard-cascade-confidence")?.hasSuffix(" scorer") == true)
            let costs = [kept, escalated, strong].map { Double($0.header("x-switchyard-cost-usd") ?? "") ?? -1 }
            // The mock answers a prompt the same way each time, so the escalated answer costs the cheap one plus the strong one.
            #expect(abs(costs[1] - (costs[0] + costs[2])) < 1e-9, "\(costs)")
            let streamed = try await send("\(url)/v1/messages",
                                          body: #"{"model":"keep","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"Hello there"}]}"#)
            #expect(streamed.status == 200 && streamed.body.contains("message_stop"), "\(streamed.body)")
            #expect(streamed.header("x-switchyard-cascade") == "accepted")
        }
    }

    @Test(arguments: [
        ("rules: [{cascade: {models: [gpt-4o-mini], threshold: 0.5}}]", "routes.r.rules[0].cascade.models", "two models"),
        ("rules: [{cascade: {models: [gpt-4o-mini, nope], threshold: 0.5}}]", "routes.r.rules[0].cascade.models[1]", "unknown model"),
        ("rules: [{cascade: {models: [gpt-4o-mini, gpt-4o], threshold: 2}}]", "routes.r.rules[0].cascade.threshold", "between"),
        ("rules: [{cascade: {models: [gpt-4o-mini, gpt-4o]}}]", "routes.r.rules[0].cascade.threshold", "is required"),
    ])
    func badCascadesNameTheKeyPath(_ testCase: (String, String, String)) {
        let yaml = "providers: {mock: {kind: mock}}\nmodels: {gpt-4o-mini: {provider: mock}, gpt-4o: {provider: mock}}\nroutes:\n  r: {"
            + testCase.0 + "}"
        RoutingTests.expectRefusal(yaml, path: testCase.1, message: testCase.2)
    }
}

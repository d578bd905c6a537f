import Foundation
import Logging
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
        do {
            _ = try ConfigLoader.parse(yaml: yaml, environment: [:])
            Issue.record("accepted: \(testCase.0)")
        } catch {
            #expect(error.path == testCase.1, "\(error)")
            #expect(error.message.contains(testCase.2), "\(error)")
        }
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

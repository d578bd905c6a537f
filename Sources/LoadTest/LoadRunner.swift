import NIOCore
import NIOHTTP1
public import Providers
public import Routing
import MockProvider
import ServerSentEvents
import SwitchyardCore
import SwitchyardModels

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// One `switchyard load` run: whom to drive, how, and with what requests.
public struct LoadPlan: Sendable {
    public enum API: String, Sendable { case openAI = "openai", anthropic }
    public enum Pattern: Sendable {
        /// Requests sent at the schedule's times whatever the answers do.
        case openLoop(ArrivalSchedule)
        /// `users` each send, wait for the answer, think, and send again, for `duration`.
        case closedLoop(users: Int, thinkTime: Duration, duration: Duration)
    }

    public var baseURL: String
    public var api: API
    public var model: String
    public var stream: Bool
    public var pattern: Pattern
    public var prompts: PromptSource
    public var apiKey: String?
    /// Extra headers on every request (user, tier, feature, priority).
    public var headers: [(String, String)]
    /// Header sets taken in turn, one per request (a mix of users, tiers, features, priorities).
    public var headerMix: [[(String, String)]] = []
    /// A header of the mix whose value groups the report (served, degraded, refused per group).
    public var groupHeader: String?
    public var timeout: Duration
    /// How long requests still in flight when the planned duration ends may take to finish; then they are cancelled
    /// and counted as `unfinished`, so a run always ends near its planned time.
    public var drainGrace: Duration = .seconds(15)
    /// List prices in USD per million input and output tokens, for pricing answers that carry no
    /// `x-switchyard-cost-usd` (streams, or a provider driven directly).
    public var prices: (input: Double, output: Double)?

    public init(baseURL: String, api: API, model: String, stream: Bool, pattern: Pattern, prompts: PromptSource,
                apiKey: String? = nil, headers: [(String, String)] = [], timeout: Duration = .seconds(120)) {
        self.baseURL = baseURL
        self.api = api
        self.model = model
        self.stream = stream
        self.pattern = pattern
        self.prompts = prompts
        self.apiKey = apiKey
        self.headers = headers
        self.timeout = timeout
        self.prices = nil
    }
}

/// Drives an OpenAI- or Anthropic-compatible endpoint and records into `statistics`.
public struct LoadRunner: Sendable {
    public let plan: LoadPlan
    public let statistics = LoadStatistics()
    let transports: UpstreamTransports
    let endpoint: UpstreamEndpoint

    public init(plan: LoadPlan, transports: UpstreamTransports) throws(LoadError) {
        guard let endpoint = UpstreamEndpoint(baseURL: plan.baseURL) else { throw LoadError("not a usable URL: \(plan.baseURL)") }
        self.plan = plan
        self.transports = transports
        self.endpoint = endpoint
    }

    /// Runs the plan to its end; `progress` is called about once a second with the elapsed time.
    public func run(progress: @escaping @Sendable (Duration, LoadStatistics.Snapshot) -> Void = { _, _ in }) async {
        let start = ContinuousClock.now
        let reporter = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                progress(ContinuousClock.now - start, statistics.snapshot)
            }
        }
        defer { reporter.cancel() }
        let planned: Duration = switch plan.pattern {
        case .openLoop(let schedule): schedule.duration
        case .closedLoop(_, _, let duration): duration
        }
        let work = Task { await drive(start: start) }
        let watchdog = Task { [grace = plan.drainGrace] in
            try await Task.sleep(until: start + planned + grace)
            work.cancel()
        }
        await work.value
        watchdog.cancel()
    }

    private func drive(start: ContinuousClock.Instant) async {
        switch plan.pattern {
        case .openLoop(let schedule):
            await withTaskGroup(of: Void.self) { group in
                for (index, offset) in schedule.sendTimes().enumerated() {
                    let intended = start + offset
                    try? await Task.sleep(until: intended)
                    if Task.isCancelled { break }
                    group.addTask { await self.send(index: index, intended: intended, start: start) }
                }
            }
        case .closedLoop(let users, let thinkTime, let duration):
            let end = start + duration
            await withTaskGroup(of: Void.self) { group in
                for user in 0..<users {
                    group.addTask {
                        var index = user
                        while ContinuousClock.now < end, !Task.isCancelled {
                            await self.send(index: index, intended: .now, start: start)
                            index += users
                            try? await Task.sleep(for: thinkTime)
                        }
                    }
                }
            }
        }
    }

    /// One request, timed from `intended`.
    func send(index: Int, intended: ContinuousClock.Instant, start: ContinuousClock.Instant) async {
        statistics.sent()
        let prompt = plan.prompts.prompt(index)
        var body: JSONValue = [
            "model": .string(plan.model), "max_tokens": .int(Int64(prompt.maxTokens)), "stream": .bool(plan.stream),
            "messages": [["role": "user", "content": .string(prompt.text)]],
        ]
        if plan.stream && plan.api == .openAI, case .object(var members) = body {
            members["stream_options"] = ["include_usage": true]
            body = .object(members)
        }
        var headers = HTTPHeaders([("content-type", "application/json")])
        if let key = plan.apiKey {
            if plan.api == .anthropic { headers.add(name: "x-api-key", value: key) } else { headers.add(name: "authorization", value: "Bearer \(key)") }
        }
        if plan.api == .anthropic { headers.add(name: "anthropic-version", value: "2023-06-01") }
        for (name, value) in plan.headers { headers.add(name: name, value: value) }
        var group: String?
        if !plan.headerMix.isEmpty {
            for (name, value) in plan.headerMix[index % plan.headerMix.count] {
                headers.add(name: name, value: value)
                if name == plan.groupHeader { group = value }
            }
        }
        let path = endpoint.basePath + (plan.api == .anthropic ? "/v1/messages" : "/v1/chat/completions")
        let request = UpstreamRequest(endpoint: endpoint, target: path, headers: headers, body: ByteBuffer(bytes: body.serialized()))
        let second = { Int((ContinuousClock.now - start).inSeconds) }
        do {
            let response = try await transports.execute(request, deadline: .now() + .nanoseconds(plan.timeout.nanoseconds),
                                                         streaming: plan.stream, maximumBodyBytes: 16 << 20)
            let cache = response.headers.first(name: "x-switchyard-cache")
            let degraded = response.headers.first(name: "x-switchyard-degraded")
            guard response.status == .ok else {
                statistics.record(second: second(), latency: .now - intended, error: Self.errorClass(Int(response.status.code)), group: group)
                return
            }
            if let stream = response.stream {
                let text = try await readStream(stream, intended: intended, second: second, cache: cache, group: group, degraded: degraded)
                if let recorded = plan.prompts.recorded { statistics.grade(recorded.grade(prompt: prompt.text, answer: text)) }
                return
            }
            let json = try? JSONValue.parse(response.body.readableBytesView)
            if let recorded = plan.prompts.recorded {
                let text = json?["choices"]?.arrayValue?.first?["message"]?["content"]?.stringValue
                    ?? json?["content"]?.arrayValue?.compactMap { $0["text"]?.stringValue }.joined()
                statistics.grade(recorded.grade(prompt: prompt.text, answer: text ?? ""))
            }
            let usage = json?["usage"]
            let output = Int(usage?["completion_tokens"]?.intValue ?? usage?["output_tokens"]?.intValue ?? 0)
            let input = Int(usage?["prompt_tokens"]?.intValue ?? usage?["input_tokens"]?.intValue ?? 0)
            let latency = ContinuousClock.now - intended
            statistics.record(second: second(), latency: latency, outputTokens: output,
                              tokensPerSecond: latency > .zero ? Double(output) / latency.inSeconds : nil, cache: cache,
                              costUSD: response.headers.first(name: "x-switchyard-cost-usd").flatMap(Double.init)
                                  ?? listPrice(input: input, output: output), group: group, degraded: degraded)
        } catch let error as UpstreamTransportError {
            let kind = Task.isCancelled ? "unfinished"
                : error == .deadlineExceeded || error == .connectTimeout ? "timeout" : "transport"
            statistics.record(second: second(), latency: .now - intended, error: kind, group: group)
        } catch {
            if Task.isCancelled {
                statistics.record(second: second(), latency: .now - intended, error: "unfinished", group: group)
                return
            }
            statistics.record(second: second(), latency: .now - intended, error: "stream-cut", group: group)
        }
    }

    /// Reads a stream to its end: TTFT at the first text, output tokens from the final usage.
    /// - Returns: The answer's text.
    @discardableResult
    func readStream(_ stream: any UpstreamBodyStream, intended: ContinuousClock.Instant, second: () -> Int, cache: String?,
                    group: String? = nil, degraded: String? = nil) async throws -> String
    {
        var answer = ""
        var decoder = SSEDecoder(maximumEventSize: 4 << 20)
        var firstToken: ContinuousClock.Instant?
        var output = 0
        var input = 0
        var finished = false
        while let part = try await stream.next() {
            for event in try decoder.feed(part) {
                let data = event.dataString
                if data == "[DONE]" || event.event == "message_stop" { finished = true; continue }
                if event.event == "error" || data.hasPrefix("{\"error\"") { throw LoadError("error event") }
                guard let json = try? JSONValue.parse(Array(data.utf8)) else { continue }
                let text = json["choices"]?.arrayValue?.first?["delta"]?["content"]?.stringValue
                    ?? json["delta"]?["text"]?.stringValue
                if firstToken == nil, let text, !text.isEmpty { firstToken = .now }
                if let text { answer += text }
                // OpenAI's last chunk has the whole usage; Anthropic's message_start the input, message_delta the output.
                let usage = json["usage"] ?? json["message"]?["usage"]
                if let tokens = usage?["completion_tokens"]?.intValue ?? usage?["output_tokens"]?.intValue { output = Int(tokens) }
                if let tokens = usage?["prompt_tokens"]?.intValue ?? usage?["input_tokens"]?.intValue, tokens > 0 { input = Int(tokens) }
            }
        }
        guard finished else { throw LoadError("stream ended without its terminal event") }
        let end = ContinuousClock.now
        let generation = firstToken.map { end - $0 } ?? .zero
        statistics.record(second: second(), latency: end - intended, timeToFirstToken: firstToken.map { $0 - intended },
                          outputTokens: output,
                          tokensPerSecond: generation > .zero && output > 1 ? Double(output - 1) / generation.inSeconds : nil,
                          cache: cache, costUSD: listPrice(input: input, output: output), group: group, degraded: degraded)
        return answer
    }

    /// The cost of an answer at the plan's list prices, if it has them.
    func listPrice(input: Int, output: Int) -> Double? {
        plan.prices.map { (Double(input) * $0.input + Double(output) * $0.output) / 1e6 }
    }

    static func errorClass(_ status: Int) -> String {
        switch status {
        case 429: "429"
        case 408, 504: "timeout"
        case 400..<500: "4xx"
        default: "5xx"
        }
    }
}

public struct LoadError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Prompts with realistic lengths: each request's prompt and `max_tokens` drawn (deterministically by index) from
/// lists of prompt lengths and answer lengths, such as a production trace's columns. With a question pool, each
/// prompt ends in a question, and a share of requests repeat an earlier prompt exactly or ask an earlier prompt's
/// question in other words (another phrasing of the same intent), to exercise exact and semantic caches.
public struct PromptSource: Sendable {
    public let promptTokens: [Int]
    public let maxTokens: [Int]
    /// Prompts with recorded answers, asked in turn instead of generated text (and their answers graded).
    public var recorded: RecordedPrompts?
    public var questions: QuestionPool?
    public var repeatShare = 0.0
    public var paraphraseShare = 0.0
    /// Each prompt is only its question (a support chat's short messages), not a body of the drawn length.
    public var questionsOnly = false
    static let words = """
        account balance transfer card payment limit refund charge statement branch loan rate fee app login password \
        verify identity address change report fraud dispute pending declined travel notice currency exchange deposit
        """.split(separator: " ").map(String.init)

    /// 50–2,000-token prompts and 40–400-token answers.
    public static let spread = PromptSource(promptTokens: [50, 120, 300, 600, 1200, 2000], maxTokens: [40, 100, 200, 400])

    public init(promptTokens: [Int], maxTokens: [Int]) {
        self.promptTokens = promptTokens.isEmpty ? [200] : promptTokens
        self.maxTokens = maxTokens.isEmpty ? [150] : maxTokens
    }

    /// Prompt and answer lengths from a trace the mock also replays (Azure CSV with `ContextTokens` and
    /// `GeneratedTokens`, or Mooncake JSON lines). Prompt lengths are capped at `maximumPrompt` tokens.
    public init(trace path: String, maximumPrompt: Int = 8000) throws(LoadError) {
        let trace: MockLengthTrace
        do {
            trace = try MockLengthTrace(path: path)
        } catch {
            throw LoadError(error.description)
        }
        guard !trace.promptLengths.isEmpty else { throw LoadError("\(path): needs prompt lengths (ContextTokens or input_length)") }
        self.init(promptTokens: trace.promptLengths.map { min($0, maximumPrompt) }, maxTokens: trace.lengths)
    }

    /// How a prompt was made.
    public enum Kind: Sendable { case fresh, repeated, paraphrased }

    /// The `index`-th prompt: text of about the drawn length (a word is about one token) and its `max_tokens`.
    public func prompt(_ index: Int) -> (text: String, maxTokens: Int) {
        if let recorded, !recorded.prompts.isEmpty {
            return (recorded.prompts[index % recorded.prompts.count].prompt, 1024)
        }
        let parts = self.parts(index)
        if questionsOnly, let asked = parts.question, let questions { return (questions.texts[asked], parts.maxTokens) }
        let question = parts.question.map { "\nQuestion: " + questions!.texts[$0] } ?? ""
        return (parts.body + question, parts.maxTokens)
    }

    /// Whether the `index`-th prompt is fresh, a repeat or a paraphrase of an earlier one.
    public func kind(_ index: Int) -> Kind { parts(index).kind }

    func parts(_ index: Int) -> (body: String, question: Int?, maxTokens: Int, kind: Kind) {
        var rng = UInt64(truncatingIfNeeded: index) &* 0x9E37_79B9_7F4A_7C15 &+ 0x2545_F491_4F6C_DD1D
        func next() -> Int {
            rng ^= rng >> 33
            rng = rng &* 0xFF51_AFD7_ED55_8CCD
            rng ^= rng >> 33
            return Int(rng % UInt64(Int.max))
        }
        if let questions, index > 0 {
            let draw = Double(next() % 1_000_000) / 1_000_000
            if draw < repeatShare + paraphraseShare {
                let earlier = parts(next() % index)
                if draw < repeatShare { return (earlier.body, earlier.question, earlier.maxTokens, .repeated) }
                // The same intent in other words, when the earlier prompt's intent has another phrasing.
                if let asked = earlier.question, let others = questions.byIntent[questions.intents[asked]], others.count > 1 {
                    var other = others[next() % others.count]
                    if other == asked { other = others[(others.firstIndex(of: asked)! + 1) % others.count] }
                    return (earlier.body, other, earlier.maxTokens, .paraphrased)
                }
            }
        }
        let length = promptTokens[next() % promptTokens.count]
        let words = (0..<length).map { _ in Self.words[next() % Self.words.count] }
        let question = questions.map { next() % $0.texts.count }
        return ("Request \(index): " + words.joined(separator: " "), question, maxTokens[next() % maxTokens.count], .fresh)
    }
}

/// Prompts whose answers were recorded from a weak and a strong model with their correctness (RouteLLM's GSM8K), so
/// that a run through the mock with `answers` grades what it was served.
public struct RecordedPrompts: Sendable {
    public struct Entry: Sendable {
        public var prompt: String
        public var weakAnswer: String
        public var weakCorrect: Bool
        public var strongAnswer: String
        public var strongCorrect: Bool
    }

    public let prompts: [Entry]
    let byPrompt: [String: Int]

    public init(examples: [RoutingExample]) {
        prompts = examples.compactMap { example in
            guard let weak = example.weakResponse, let strong = example.strongResponse else { return nil }
            return Entry(prompt: example.prompt, weakAnswer: weak, weakCorrect: example.weakCorrect, strongAnswer: strong,
                         strongCorrect: example.strongCorrect)
        }
        byPrompt = Dictionary(prompts.enumerated().map { ($1.prompt, $0) }, uniquingKeysWith: { first, _ in first })
    }

    /// Whether `answer` is right, by which recorded answer it is; nil when it is neither (surrounding whitespace
    /// aside: a stream's text is its deltas joined).
    public func grade(prompt: String, answer: String) -> Bool? {
        guard let index = byPrompt[prompt] else { return nil }
        let entry = prompts[index]
        let given = Self.trimmed(answer)
        if given == Self.trimmed(entry.weakAnswer) { return entry.weakCorrect }
        if given == Self.trimmed(entry.strongAnswer) { return entry.strongCorrect }
        return nil
    }

    static func trimmed(_ text: String) -> Substring {
        let isSpace: (Character) -> Bool = { $0.isWhitespace }
        let start = text.firstIndex { !isSpace($0) } ?? text.endIndex
        let end = text.lastIndex { !isSpace($0) }.map { text.index(after: $0) } ?? start
        return text[start..<max(start, end)]
    }
}

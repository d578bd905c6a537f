import Routing
import SwitchyardCore
import Yams

import Foundation

/// A load test described in YAML (`loadtests/*.yaml`): what to send, how, and, when it has no `url`, the
/// in-process gateway to run it against (the embedded default with the given mock behaviour).
///
/// Keys: `name`, `description`, `url`, `api`, `model`, `stream`, `duration` (seconds), the pattern as `rate` (with
/// `ramp_from`), `steps` (a list of `{rate, seconds}`) or `users` (with `think_ms`), `trace`, `repeat_share`,
/// `paraphrase_share`, `questions_only` (each prompt is just its question), `header_mix` (a list of header maps, one
/// per request in turn), `daily_volume`, `input_price`, `output_price`, `mock` (the gateway's `mock:` section),
/// `mock_latency_scale`, `gateway_config` (a gateway configuration file for the in-process gateway instead of the
/// embedded default), `group_header` (a header of the mix whose value groups the report: served, degraded and
/// refused per group), and `recorded_prompts: gsm8k` (with `routing_data`, default ../../shared/data/routing): the
/// prompts are GSM8K's, the in-process mock answers them with their recorded answers, and the report grades what
/// was served.
public struct LoadScenario: Sendable {
    public var name: String
    public var description: String
    /// nil: run against an in-process gateway.
    public var url: String?
    public var plan: LoadPlan
    public var dailyVolume: Int
    public var mock: MockOptions
    public var mockLatencyScale: Double
    /// Models or routes to run the scenario through one after the other, compared in one table (`compare_models`).
    public var compareModels: [String] = []
    /// The in-process gateway's configuration: the embedded default, with the scenario's `mock`, `routes` (added
    /// to the default's) and `caches: false` (both response caches off, so repeated prompts reach the models).
    public var gateway = GatewayConfig.embeddedDefault()

    public init(yaml: String, file: String = "scenario") throws(LoadError) {
        let root: Node.Mapping
        do {
            guard let mapping = try Yams.compose(yaml: yaml)?.mapping else { throw LoadError("\(file): expected a mapping") }
            root = mapping
        } catch let error as LoadError {
            throw error
        } catch {
            throw LoadError("\(file): not valid YAML: \(error)")
        }
        let known: Set<String> = ["name", "description", "url", "api", "model", "stream", "duration", "rate", "ramp_from", "steps",
                                  "users", "think_ms", "trace", "repeat_share", "paraphrase_share", "questions", "header_mix",
                                  "daily_volume", "input_price", "output_price", "drain_grace_seconds", "mock", "mock_latency_scale", "recorded_prompts", "routing_data", "compare_models", "routes", "caches", "gateway_config", "group_header", "questions_only", "timeout_seconds"]
        // Relative paths in a scenario are relative to the scenario file, wherever the tool is started from.
        let directory = file.contains("/") ? String(file[..<file.lastIndex(of: "/")!]) : "."
        func resolve(_ path: String) -> String { path.hasPrefix("/") ? path : directory + "/" + path }
        var values: [String: Node] = [:]
        for (key, value) in root {
            guard let name = key.string, known.contains(name) else { throw LoadError("\(file): unknown key '\(key.string ?? "?")'") }
            values[name] = value
        }
        func string(_ key: String) -> String? { values[key]?.string }
        func number(_ key: String) throws(LoadError) -> Double? {
            guard let node = values[key] else { return nil }
            guard let value = node.float ?? node.int.map(Double.init) else { throw LoadError("\(file): \(key) must be a number") }
            return value
        }
        name = string("name") ?? file
        description = string("description") ?? ""
        url = string("url")
        dailyVolume = Int(try number("daily_volume") ?? 100_000)
        mockLatencyScale = try number("mock_latency_scale") ?? 1
        if let section = values["mock"] {
            do {
                mock = try ConfigLoader.parseMockSection(yaml: try Yams.serialize(node: section), path: "mock")
            } catch {
                throw LoadError("\(file): \(error)")
            }
        } else {
            mock = MockOptions()
        }
        guard let api = LoadPlan.API(rawValue: string("api") ?? "openai") else { throw LoadError("\(file): api is openai or anthropic") }
        let duration = Duration.milliseconds(Int64((try number("duration") ?? 10) * 1000))
        let pattern: LoadPlan.Pattern
        if let users = try number("users") {
            pattern = .closedLoop(users: Int(users), thinkTime: .milliseconds(Int64(try number("think_ms") ?? 0)), duration: duration)
        } else if let steps = values["steps"]?.sequence {
            var parsed: [ArrivalSchedule.Step] = []
            for step in steps {
                guard let rate = step["rate"]?.float ?? step["rate"]?.int.map(Double.init),
                      let seconds = step["seconds"]?.float ?? step["seconds"]?.int.map(Double.init) else {
                    throw LoadError("\(file): each step needs rate and seconds")
                }
                parsed.append(.init(rate: rate, duration: .milliseconds(Int64(seconds * 1000))))
            }
            pattern = .openLoop(ArrivalSchedule(steps: parsed))
        } else if let rate = try number("rate") {
            pattern = .openLoop(try number("ramp_from").map { .ramp(from: $0, to: rate, duration: duration) }
                                ?? .constant(rate: rate, duration: duration))
        } else {
            throw LoadError("\(file): give rate, steps or users")
        }
        var prompts = try string("trace").map { path throws(LoadError) in try PromptSource(trace: resolve(path)) }
            ?? PromptSource.spread
        let repeats = try number("repeat_share") ?? 0, paraphrases = try number("paraphrase_share") ?? 0
        if repeats > 0 || paraphrases > 0 {
            guard repeats + paraphrases <= 1 else { throw LoadError("\(file): repeat_share + paraphrase_share exceed 1") }
            prompts.questions = try QuestionPool.banking77(path: resolve(string("questions") ?? "../../shared/data/cache/banking77_test.csv"))
            prompts.repeatShare = repeats
            prompts.paraphraseShare = paraphrases
            prompts.questionsOnly = values["questions_only"]?.bool ?? false
        }
        if let set = string("recorded_prompts") {
            // The GSM8K prompts in turn, the mock answering each with its recorded answer for the model's tier.
            guard set == "gsm8k" else { throw LoadError("\(file): recorded_prompts: only gsm8k has recorded answers") }
            let data = resolve(string("routing_data") ?? "../../shared/data/routing")
            do {
                prompts.recorded = RecordedPrompts(examples: try RoutingData.load(directory: data).filter { $0.dataset == set })
            } catch {
                throw LoadError("\(file): \(error.description)")
            }
            mock.answers = data
        }
        compareModels = (values["compare_models"]?.sequence ?? []).compactMap(\.string)
        if let path = string("gateway_config") {
            // The in-process gateway from a configuration file (keys with tiers, limits, degradation) instead of the
            // embedded default; the scenario's mock settings still apply.
            // A file without providers (limits, keys, degradation: what scripts/cluster.sh also appends to its
            // instances' configuration) runs on the built-in mock and the default catalog.
            guard var text = try? String(contentsOfFile: resolve(path), encoding: .utf8) else {
                throw LoadError("\(file): gateway_config: cannot read \(resolve(path))")
            }
            if (try? Yams.compose(yaml: text))??.mapping?["providers"] == nil {
                text = "providers: {mock: {kind: mock}}\nmodels:\n"
                    + DefaultCatalog.models.map { "  \($0.name): {provider: mock}\n" }.joined() + text
            }
            do {
                gateway = try ConfigLoader.parse(yaml: text, environment: [:])
            } catch {
                throw LoadError("\(file): gateway_config \(path): \(error)")
            }
        }
        if let section = values["routes"] {
            do {
                try ConfigLoader.parseRoutesSection(yaml: try Yams.serialize(node: section), path: "routes", into: &gateway)
            } catch {
                throw LoadError("\(file): \(error)")
            }
        }
        if values["caches"]?.bool == false {
            gateway.cache.exactEnabled = false
            gateway.cache.semanticEnabled = false
        }
        var headerMix: [[(String, String)]] = []
        for entry in values["header_mix"]?.sequence ?? [] {
            headerMix.append((entry.mapping ?? [:]).compactMap { key, value in key.string.flatMap { k in value.string.map { (k, $0) } } })
        }
        plan = LoadPlan(baseURL: url ?? "http://127.0.0.1:0", api: api, model: string("model") ?? "gpt-4o-mini",
                        stream: values["stream"]?.bool ?? false, pattern: pattern, prompts: prompts)
        plan.headerMix = headerMix
        plan.groupHeader = string("group_header")
        if let input = try number("input_price"), let output = try number("output_price") { plan.prices = (input, output) }
        if let grace = try number("drain_grace_seconds") { plan.drainGrace = .milliseconds(Int64(grace * 1000)) }
        if let timeout = try number("timeout_seconds") {
            guard (1...86_400).contains(timeout) else { throw LoadError("\(file): timeout_seconds must be between 1 and 86400") }
            plan.timeout = .milliseconds(Int64(timeout * 1000))
        }
    }
}

/// Questions with their intent, for repeated and paraphrased prompts (Banking77: 77 intents, many phrasings each).
public struct QuestionPool: Sendable {
    public let texts: [String]
    public let intents: [String]
    /// Question indices per intent.
    let byIntent: [String: [Int]]

    public init(texts: [String], intents: [String]) {
        self.texts = texts
        self.intents = intents
        byIntent = Dictionary(grouping: texts.indices, by: { intents[$0] })
    }

    /// `../shared/data/cache/banking77_test.csv` (3,080 questions), found from the working directory.
    public static func banking77(path: String = "../shared/data/cache/banking77_test.csv") throws(LoadError) -> QuestionPool {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw LoadError("cannot read \(path)") }
        var texts: [String] = [], intents: [String] = []
        for line in text.split(whereSeparator: \.isNewline).dropFirst() {
            // text,category, where text may be quoted with doubled quotes inside.
            guard let comma = line.lastIndex(of: ",") else { continue }
            var question = String(line[..<comma])
            if question.hasPrefix("\""), question.hasSuffix("\""), question.count >= 2 {
                question = String(question.dropFirst().dropLast()).replacingOccurrences(of: "\"\"", with: "\"")
            }
            texts.append(question)
            intents.append(String(line[line.index(after: comma)...]))
        }
        guard !texts.isEmpty else { throw LoadError("\(path): no questions") }
        return QuestionPool(texts: texts, intents: intents)
    }
}

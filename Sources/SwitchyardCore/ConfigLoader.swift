#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Yams

/// A configuration problem, naming the key path.
public struct ConfigError: Error, Sendable, CustomStringConvertible, Hashable {
    public var path: String
    public var message: String

    public init(path: String, _ message: String) {
        self.path = path
        self.message = message
    }

    public var description: String { path.isEmpty ? message : "\(path): \(message)" }
}

/// Reads a YAML configuration file into a validated `GatewayConfig`.
public enum ConfigLoader {
    /// Loads and validates the file at `path`.
    /// - Parameter environment: Where `api_key_env` references are checked (defaults to the process environment).
    public static func load(path: String, environment: [String: String]? = nil) throws(ConfigError) -> GatewayConfig {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigError(path: "", "cannot read '\(path)'")
        }
        return try parse(yaml: text, environment: environment ?? ProcessInfo.processInfo.environment)
    }

    /// The `mock:` section: the built-in mock's limits, fault rates, seed and length trace.
    static func parseMock(_ mock: MappingReader) throws(ConfigError) -> MockOptions {
        var options = MockOptions()
        options.requestsPerMinute = try mock.int("requests_per_minute", in: 1...100_000_000)
        options.tokensPerMinute = try mock.int("tokens_per_minute", in: 1...10_000_000_000)
        options.seed = UInt64(try mock.int("seed", in: 0...Int.max) ?? 1)
        if let trace = try mock.string("length_trace") {
            guard FileManager.default.isReadableFile(atPath: trace) else {
                throw ConfigError(path: mock.child("length_trace"), "cannot read '\(trace)'")
            }
            options.lengthTrace = trace
        }
        if let answers = try mock.string("answers") {
            guard FileManager.default.fileExists(atPath: answers + "/routellm/gsm8k_responses.csv") else {
                throw ConfigError(path: mock.child("answers"), "'\(answers)' has no routellm/gsm8k_responses.csv")
            }
            options.answers = answers
        }
        if let rates = try mock.mapping("fault_rates") { options.faultRates = try parseFaultRates(rates) }
        if let windows = try mock.sequence("schedule") {
            guard windows.count <= 1000 else { throw ConfigError(path: mock.child("schedule"), "at most 1000 windows") }
            for (index, node) in windows.enumerated() {
                let window = try MappingReader(node, path: "\(mock.child("schedule"))[\(index)]")
                let start = try window.double("from", in: 0...1e7) ?? 0
                guard let end = try window.double("to", in: 0...1e7), end > start else {
                    throw ConfigError(path: window.child("to"), "is required, after from (seconds since the first request)")
                }
                let model = try window.string("model")
                guard let rates = try window.mapping("fault_rates") else { throw ConfigError(path: window.child("fault_rates"), "is required") }
                options.schedule.append(.init(start: start, end: end, model: model, faultRates: try parseFaultRates(rates)))
                try window.finish()
            }
        }
        try mock.finish()
        return options
    }

    static func parseFaultRates(_ rates: MappingReader) throws(ConfigError) -> [String: Double] {
        var result: [String: Double] = [:]
        for name in rates.keys {
            guard MockOptions.faultNames.contains(name) else {
                throw ConfigError(path: rates.child(name), "unknown fault (known: \(MockOptions.faultNames.joined(separator: ", ")))")
            }
            result[name] = try rates.double(name, in: 0...1)
        }
        guard result.values.reduce(0, +) <= 1 + 1e-9 else { throw ConfigError(path: rates.path, "the rates add up to more than 1") }
        try rates.finish()
        return result
    }

    /// A `mock:` section on its own (as `switchyard load` scenarios carry it), with `path` naming it in errors.
    public static func parseMockSection(yaml: String, path: String) throws(ConfigError) -> MockOptions {
        let node: Node
        do {
            guard let parsed = try Yams.compose(yaml: yaml) else { return MockOptions() }
            node = parsed
        } catch {
            throw ConfigError(path: path, "not valid YAML: \(error)")
        }
        return try parseMock(try MappingReader(node, path: path))
    }

    /// Validates YAML text.
    public static func parse(yaml: String, environment: [String: String]) throws(ConfigError) -> GatewayConfig {
        let root: Node
        do {
            guard let node = try Yams.compose(yaml: yaml) else { throw ConfigError(path: "", "the file is empty") }
            root = node
        } catch let error as ConfigError {
            throw error
        } catch {
            throw ConfigError(path: "", "not valid YAML: \(error)")
        }
        let top = try MappingReader(root, path: "")
        var config = GatewayConfig(providers: [:], models: [:])
        if let listen = try top.mapping("listen") {
            config.host = try listen.string("host") ?? config.host
            config.port = try listen.int("port", in: 0...65535) ?? config.port
            func seconds(_ key: String) throws(ConfigError) -> Duration? {
                try listen.double(key, in: 0.01...86400).map { .milliseconds(Int64($0 * 1000)) }
            }
            config.edge.headTimeout = try seconds("head_timeout_seconds") ?? config.edge.headTimeout
            config.edge.idleTimeout = try seconds("idle_timeout_seconds") ?? config.edge.idleTimeout
            config.edge.writeTimeout = try seconds("write_timeout_seconds") ?? config.edge.writeTimeout
            config.edge.bodyMinimumBytesPerSecond = try listen.int("body_min_bytes_per_second", in: 0...(1 << 30))
                ?? config.edge.bodyMinimumBytesPerSecond
            config.edge.maxConnections = try listen.int("max_connections", in: 1...1_000_000) ?? config.edge.maxConnections
            config.edge.bodyBudgetBytes = try listen.int("body_budget_bytes", in: 1024...(1 << 40)) ?? config.edge.bodyBudgetBytes
            try listen.finish()
        }
        config.maxBodyBytes = try top.int("max_body_bytes", in: 1024...(1 << 30)) ?? config.maxBodyBytes
        if let seconds = try top.double("drain_timeout_seconds", in: 0...3600) {
            config.drainTimeout = .milliseconds(Int64(seconds * 1000))
        }
        config.mockLatencyScale = try top.double("mock_latency_scale", in: 0...100) ?? 1
        if let mock = try top.mapping("mock") { config.mock = try parseMock(mock) }
        if let cache = try top.mapping("cache") {
            if let exact = try cache.mapping("exact") {
                config.cache.exactEnabled = try exact.bool("enabled") ?? true
                if let seconds = try exact.double("ttl_seconds", in: 0...(365 * 86400)) { config.cache.ttl = .milliseconds(Int64(seconds * 1000)) }
                config.cache.maxEntries = try exact.int("max_entries", in: 1...100_000_000) ?? config.cache.maxEntries
                config.cache.maxBytes = try exact.int("max_bytes", in: 1024...(1 << 40)) ?? config.cache.maxBytes
                try exact.finish()
            }
            if let semantic = try cache.mapping("semantic") {
                config.cache.semanticEnabled = try semantic.bool("enabled") ?? true
                config.cache.semanticThreshold = try semantic.double("threshold", in: 0.5...1) ?? config.cache.semanticThreshold
                config.cache.semanticVerify = try semantic.bool("verify") ?? true
                if let verifier = try semantic.string("verifier") {
                    guard ["learned", "rules", "rules_or_learned"].contains(verifier) else {
                        throw ConfigError(path: semantic.child("verifier"), "must be 'rules', 'learned' or 'rules_or_learned'")
                    }
                    config.cache.semanticLearnedVerifier = verifier != "rules"
                    config.cache.semanticLearnedExtendsRules = verifier == "rules_or_learned"
                }
                if let file = try semantic.string("verifier_file") {
                    guard FileManager.default.isReadableFile(atPath: file) else {
                        throw ConfigError(path: semantic.child("verifier_file"), "cannot read '\(file)'")
                    }
                    config.cache.semanticVerifierFile = file
                }
                config.cache.semanticAgreementCosine = try semantic.double("agreement_cosine", in: 0.5...1)
                    ?? config.cache.semanticAgreementCosine
                config.cache.semanticAgreementProbability = try semantic.double("agreement_probability", in: 0...1)
                    ?? config.cache.semanticAgreementProbability
                config.cache.semanticCalibrate = try semantic.bool("calibrate") ?? true
                config.cache.semanticTargetPrecision = try semantic.double("target_precision", in: 0.5...0.9999)
                    ?? config.cache.semanticTargetPrecision
                config.cache.semanticWithTools = try semantic.bool("with_tools") ?? false
                config.cache.semanticMaxEntries = try semantic.int("max_entries", in: 1...100_000_000) ?? config.cache.semanticMaxEntries
                config.cache.semanticMaxBytes = try semantic.int("max_bytes", in: 1024...(1 << 40)) ?? config.cache.semanticMaxBytes
                config.cache.semanticANNThreshold = try semantic.int("ann_threshold", in: 2...100_000_000) ?? config.cache.semanticANNThreshold
                config.cache.semanticShadowRate = try semantic.double("shadow_rate", in: 0...1) ?? 0
                config.cache.semanticMaxQuestionBytes = try semantic.int("max_question_bytes", in: 1...1_000_000)
                    ?? config.cache.semanticMaxQuestionBytes
                try semantic.finish()
            }
            try cache.finish()
        }

        if let state = try top.mapping("state") { config.state = try parseState(state, environment: environment) }

        guard let providers = try top.mapping("providers") else { throw ConfigError(path: "providers", "is required") }
        for (name, reader) in try providers.entries() {
            config.providers[name] = try parseProvider(name: name, reader, environment: environment)
        }
        guard !config.providers.isEmpty else { throw ConfigError(path: "providers", "must name at least one provider") }

        guard let models = try top.mapping("models") else { throw ConfigError(path: "models", "is required") }
        for (name, reader) in try models.entries() {
            let provider = try reader.requiredString("provider")
            guard config.providers[provider] != nil else {
                throw ConfigError(path: reader.child("provider"), "unknown provider '\(provider)' (known: \(config.providers.keys.sorted().joined(separator: ", ")))")
            }
            let upstream = try reader.string("upstream_model") ?? name
            let price: ModelPrice
            if let priceReader = try reader.mapping("price") {
                price = ModelPrice(input: try priceReader.money("input"), output: try priceReader.money("output"),
                                   cacheRead: try priceReader.money("cache_read", optional: true),
                                   cacheWrite: try priceReader.money("cache_write", optional: true))
                try priceReader.finish()
            } else if let known = DefaultCatalog.models.first(where: { $0.name == upstream }) {
                price = known.price
            } else {
                throw ConfigError(path: reader.child("price"), "is required (no list price known for '\(upstream)')")
            }
            if let seconds = try reader.double("cache_ttl_seconds", in: 0...(365 * 86400)) {
                config.cache.modelTTL[name] = .milliseconds(Int64(seconds * 1000))
            }
            var autoPromptCache = false
            if let mode = try reader.string("prompt_cache") {
                guard ["auto", "off"].contains(mode) else { throw ConfigError(path: reader.child("prompt_cache"), "must be auto or off") }
                autoPromptCache = mode == "auto"
            }
            let batch = try parseBatchPolicy(reader) ?? .never
            if batch == .auto, config.providers[provider]?.kind.hasBatchAPI == false {
                throw ConfigError(path: reader.child("batch"), "provider '\(provider)' has no batch API")
            }
            if let exact = try reader.bool("exact_cache"), !exact { config.cache.exactOff.insert(name) }
            if let threshold = try reader.double("semantic_threshold", in: 0.5...1) { config.cache.modelSemanticThreshold[name] = threshold }
            if let semantic = try reader.bool("semantic_cache"), !semantic { config.cache.semanticOff.insert(name) }
            if let deployments = try reader.sequence("deployments") {
                for (index, node) in deployments.enumerated() {
                    let item = try MappingReader(node, path: "\(reader.child("deployments"))[\(index)]")
                    let other = try item.requiredString("provider")
                    guard config.providers[other] != nil else {
                        throw ConfigError(path: item.child("provider"), "unknown provider '\(other)'")
                    }
                    if batch == .auto, config.providers[other]?.kind.hasBatchAPI == false {
                        throw ConfigError(path: item.child("provider"), "provider '\(other)' has no batch API, and the model has batch: auto")
                    }
                    let deployment = ModelRoute(name: name, provider: other, upstreamModel: try item.string("upstream_model") ?? upstream,
                                                price: price, autoPromptCache: autoPromptCache, batch: batch)
                    if let budget = try parseBudget(item) { config.budgets[deployment.deploymentID] = budget }
                    config.deployments[name, default: []].append(deployment)
                    try item.finish()
                }
            }
            if let fallbacks = try stringList(reader, "fallbacks") { config.fallbacks[name] = fallbacks }
            if let budget = try parseBudget(reader) { config.budgets[provider + "/" + upstream] = budget }
            try reader.finish()
            config.models[name] = ModelRoute(name: name, provider: provider, upstreamModel: upstream, price: price,
                                             autoPromptCache: autoPromptCache, batch: batch)
        }
        guard !config.models.isEmpty else { throw ConfigError(path: "models", "must name at least one model") }
        for (name, fallbacks) in config.fallbacks {
            for (index, fallback) in fallbacks.enumerated() where config.models[fallback] == nil || fallback == name {
                throw ConfigError(path: fallbacks.count == 1 ? "models.\(name).fallbacks" : "models.\(name).fallbacks[\(index)]",
                                  fallback == name ? "a model cannot fall back to itself" : "unknown model '\(fallback)'")
            }
        }
        if let resilience = try top.mapping("resilience") { config.resilience = try parseResilience(resilience) }
        if let admission = try top.mapping("admission") { config.admission = try parseAdmission(admission) }
        if let jobs = try top.mapping("jobs") { config.jobs = try parseJobs(jobs) }
        if let ledger = try top.mapping("ledger") { config.ledger = try parseLedger(ledger) }
        if let alerts = try top.mapping("alerts") {
            if let url = try alerts.string("webhook_url") {
                guard url.hasPrefix("http://") || url.hasPrefix("https://"), UpstreamEndpoint(baseURL: url) != nil else {
                    throw ConfigError(path: alerts.child("webhook_url"), "must be an http:// or https:// URL")
                }
                config.alertWebhook = url
            }
            try alerts.finish()
        }
        if let routes = try top.mapping("routes") { try parseRoutes(routes, config: &config) }
        if let routing = try top.mapping("routing") {
            if let file = try routing.string("classifier_file") {
                guard FileManager.default.isReadableFile(atPath: file) else {
                    throw ConfigError(path: routing.child("classifier_file"), "cannot read '\(file)'")
                }
                config.classifierFile = file
            }
            try routing.finish()
        }

        if let keys = try top.sequence("keys") {
            for (offset, node) in keys.enumerated() {
                let reader = try MappingReader(node, path: "keys[\(offset)]")
                let hash = try reader.requiredString("sha256").lowercased()
                guard hash.count == 64, hash.allSatisfy({ $0.isHexDigit }) else {
                    throw ConfigError(path: reader.child("sha256"), "must be 64 hex digits (the SHA-256 of the key, not the key)")
                }
                let tenant = try reader.requiredString("tenant")
                let caller = Caller(tenant: tenant, user: try reader.string("user") ?? tenant,
                                    tier: try reader.string("tier") ?? "default",
                                    feature: try reader.string("feature") ?? "default",
                                    keyID: String(hash.prefix(12)),
                                    featureFromHeader: try reader.bool("feature_header") ?? false,
                                    priority: try parsePriority(reader, "priority") ?? .p0)
                try reader.finish()
                if config.keys.contains(where: { $0.sha256 == hash }) {
                    throw ConfigError(path: reader.child("sha256"), "duplicate key")
                }
                config.keys.append(APIKeyEntry(sha256: hash, caller: caller))
            }
        }
        config.limits = try parseLimits(top)
        config.degrade = try parseDegrade(top, models: Set(config.models.keys), routes: Set(config.routes.keys))
        try top.finish()
        return config
    }

    /// `state: {backend: memory | redis, url: redis://host:port/db, key_prefix, username_env, password_env,
    /// connect_timeout_seconds, command_timeout_seconds, pool_size, caches: fail_open | fail_closed}`.
    static func parseState(_ reader: MappingReader, environment: [String: String]) throws(ConfigError) -> StateSettings {
        var state = StateSettings()
        if let backend = try reader.string("backend") {
            guard let value = StateSettings.Backend(rawValue: backend) else {
                throw ConfigError(path: reader.child("backend"), "must be 'memory' or 'redis'")
            }
            state.backend = value
        }
        if let url = try reader.string("url") {
            // redis://host[:port][/db], or rediss:// for TLS; credentials come from the environment, never the file.
            let scheme = ["redis://", "rediss://"].first { url.hasPrefix($0) }
            guard let scheme else {
                throw ConfigError(path: reader.child("url"), "must be redis://host[:port][/database] or rediss://… (TLS)")
            }
            state.tls = scheme == "rediss://"
            var rest = Substring(url.dropFirst(scheme.count))
            guard !rest.contains("@") else {
                throw ConfigError(path: reader.child("url"), "must not hold credentials: name them with username_env and password_env")
            }
            if let slash = rest.firstIndex(of: "/") {
                let database = rest[rest.index(after: slash)...]
                guard database.isEmpty || (Int(database).map { (0...15).contains($0) } ?? false) else {
                    throw ConfigError(path: reader.child("url"), "database must be a number from 0 to 15")
                }
                state.database = Int(database) ?? 0
                rest = rest[..<slash]
            }
            let parts = rest.split(separator: ":", omittingEmptySubsequences: false)
            guard let host = parts.first, !host.isEmpty, parts.count <= 2 else {
                throw ConfigError(path: reader.child("url"), "must name a host")
            }
            state.host = String(host)
            if parts.count == 2 {
                guard let port = Int(parts[1]), (1...65535).contains(port) else {
                    throw ConfigError(path: reader.child("url"), "port must be a number from 1 to 65535")
                }
                state.port = port
            }
        }
        if let caFile = try reader.string("tls_ca_file") {
            guard state.tls else { throw ConfigError(path: reader.child("tls_ca_file"), "needs a rediss:// url") }
            guard FileManager.default.isReadableFile(atPath: caFile) else {
                throw ConfigError(path: reader.child("tls_ca_file"), "cannot read '\(caFile)'")
            }
            state.tlsCAFile = caFile
        }
        state.cluster = try reader.bool("cluster") ?? false
        if state.cluster && state.database != 0 {
            throw ConfigError(path: reader.child("url"), "a Redis Cluster has only database 0")
        }
        if let prefix = try reader.string("key_prefix") {
            guard prefix.utf8.count <= 128, !prefix.contains(where: { $0.isWhitespace || $0 == "{" || $0 == "}" }) else {
                throw ConfigError(path: reader.child("key_prefix"), "must be at most 128 bytes, without spaces or braces")
            }
            state.keyPrefix = prefix
        }
        for (key, assign) in [("username_env", { (value: String) in state.username = value }),
                              ("password_env", { (value: String) in state.password = value })] {
            guard let name = try reader.string(key) else { continue }
            guard let value = environment[name], !value.isEmpty else {
                throw ConfigError(path: reader.child(key), "the environment variable '\(name)' is not set")
            }
            assign(value)
        }
        if let seconds = try reader.double("connect_timeout_seconds", in: 0.01...60) { state.connectTimeout = .milliseconds(Int64(seconds * 1000)) }
        if let seconds = try reader.double("command_timeout_seconds", in: 0.01...60) { state.commandTimeout = .milliseconds(Int64(seconds * 1000)) }
        state.poolSize = try reader.int("pool_size", in: 1...256) ?? state.poolSize
        for (key, assign) in [("caches", { (value: StateSettings.FailurePolicy) in state.caches = value }),
                              ("limits", { (value: StateSettings.FailurePolicy) in state.limits = value })] {
            guard let policy = try reader.string(key) else { continue }
            guard let value = StateSettings.FailurePolicy(rawValue: policy) else {
                throw ConfigError(path: reader.child(key), "must be 'fail_open' or 'fail_closed'")
            }
            assign(value)
        }
        try reader.finish()
        return state
    }

    static func parseProvider(name: String, _ reader: MappingReader, environment: [String: String]) throws(ConfigError)
        -> ProviderConfig
    {
        let kindName = try reader.requiredString("kind")
        guard let kind = ProviderKind(rawValue: kindName) else {
            throw ConfigError(path: reader.child("kind"), "must be one of \(ProviderKind.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        var provider = ProviderConfig(name: name, kind: kind, baseURL: "")
        func checked(_ url: String, path: String) throws(ConfigError) -> String {
            guard url.hasPrefix("http://") || url.hasPrefix("https://") else {
                throw ConfigError(path: path, "must start with http:// or https://")
            }
            guard UpstreamEndpoint(baseURL: url) != nil else {
                throw ConfigError(path: path, "is not a valid URL (scheme://host[:port][/path])")
            }
            var trimmed = url
            while trimmed.hasSuffix("/") { trimmed.removeLast() }
            if trimmed.hasSuffix("/v1") { trimmed.removeLast(3) }
            return trimmed
        }
        if let replicas = try reader.sequence("replicas") {
            guard kind == .openAICompatible else {
                throw ConfigError(path: reader.child("replicas"), "is for kind 'openai-compatible' (self-hosted servers)")
            }
            guard !reader.has("base_url") else {
                throw ConfigError(path: reader.child("base_url"), "a replica group has replicas instead of a base_url")
            }
            guard (1...256).contains(replicas.count) else {
                throw ConfigError(path: reader.child("replicas"), "must list 1 to 256 base URLs")
            }
            for (index, node) in replicas.enumerated() {
                let path = "\(reader.child("replicas"))[\(index)]"
                guard let url = node.scalar?.string else { throw ConfigError(path: path, "expected a URL") }
                provider.replicas.append(try checked(url, path: path))
            }
            provider.baseURL = provider.replicas[0]
            if let balancing = try reader.string("balancing") {
                guard ["least_outstanding_tokens", "least_requests", "round_robin"].contains(balancing) else {
                    throw ConfigError(path: reader.child("balancing"), "must be least_outstanding_tokens, least_requests or round_robin")
                }
                provider.balancing = balancing
            }
            provider.balancingChoices = try reader.int("balancing_choices", in: 1...256)
        } else if kind != .mock {
            let defaultURL: String? = switch kind {
            case .openAI: "https://api.openai.com"
            case .anthropic: "https://api.anthropic.com"
            default: nil
            }
            guard let url = try reader.string("base_url") ?? defaultURL else {
                throw ConfigError(path: reader.child("base_url"), "is required for kind '\(kindName)'")
            }
            provider.baseURL = try checked(url, path: reader.child("base_url"))
        }
        if reader.has("api_key") {
            throw ConfigError(path: reader.child("api_key"), "keys are never written in the file: use api_key_env: NAME_OF_VARIABLE")
        }
        if let env = try reader.string("api_key_env") {
            guard environment[env]?.isEmpty == false else {
                throw ConfigError(path: reader.child("api_key_env"), "environment variable '\(env)' is not set")
            }
            provider.apiKeyEnv = env
        } else if kind == .openAI || kind == .anthropic {
            throw ConfigError(path: reader.child("api_key_env"), "is required for kind '\(kindName)'")
        }
        if let timeouts = try reader.mapping("timeouts") {
            if let value = try timeouts.double("connect_seconds", in: 0.001...600) { provider.timeouts.connect = .milliseconds(Int64(value * 1000)) }
            if let value = try timeouts.double("total_seconds", in: 0.001...86400) { provider.timeouts.total = .milliseconds(Int64(value * 1000)) }
            if let value = try timeouts.double("first_token_seconds", in: 0.001...3600) { provider.timeouts.firstToken = .milliseconds(Int64(value * 1000)) }
            if let value = try timeouts.double("idle_seconds", in: 0.001...3600) { provider.timeouts.idle = .milliseconds(Int64(value * 1000)) }
            try timeouts.finish()
        }
        provider.poolSize = try reader.int("pool_size", in: 1...65536) ?? provider.poolSize
        provider.keepAlive = try reader.bool("keep_alive") ?? provider.keepAlive
        if let file = try reader.string("tls_ca_file") {
            guard provider.baseURL.hasPrefix("https://") else {
                throw ConfigError(path: reader.child("tls_ca_file"), "applies only to an https:// base_url")
            }
            guard let data = FileManager.default.contents(atPath: file),
                  String(decoding: data, as: UTF8.self).contains("-----BEGIN CERTIFICATE-----") else {
                throw ConfigError(path: reader.child("tls_ca_file"), "'\(file)' is not a readable PEM file of certificates")
            }
            provider.tlsCAFile = file
        }
        if let headers = try reader.mapping("headers") {
            for header in headers.keys {
                let value = try headers.requiredString(header)
                // Checked once here, so the upstream client need not validate headers per request.
                let token = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                guard !header.isEmpty, header.allSatisfy({ token.contains($0) }) else {
                    throw ConfigError(path: headers.child(header), "is not a valid HTTP header name")
                }
                guard value.unicodeScalars.allSatisfy({ $0 == "\t" || ($0.value >= 0x20 && $0.value != 0x7F) }) else {
                    throw ConfigError(path: headers.child(header), "contains control characters")
                }
                provider.headers[header] = value
            }
            try headers.finish()
        }
        try reader.finish()
        return provider
    }
}

/// Reads a YAML mapping, tracking which keys were used so that unknown keys are reported.
final class MappingReader {
    let path: String
    private var members: [String: Node] = [:]
    private var order: [String] = []
    private var used: Set<String> = []

    init(_ node: Node, path: String) throws(ConfigError) {
        guard let mapping = node.mapping else { throw ConfigError(path: path, "expected a mapping") }
        self.path = path
        for (key, value) in mapping {
            guard let name = key.scalar?.string else { throw ConfigError(path: path, "keys must be strings") }
            members[name] = value
            order.append(name)
        }
    }

    func child(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    func has(_ key: String) -> Bool { members[key] != nil }

    private func node(_ key: String) -> Node? {
        used.insert(key)
        guard let node = members[key] else { return nil }
        if node.null != nil { return nil }
        return node
    }

    func string(_ key: String) throws(ConfigError) -> String? {
        guard let node = node(key) else { return nil }
        guard let scalar = node.scalar else { throw ConfigError(path: child(key), "expected a string") }
        return scalar.string
    }

    func requiredString(_ key: String) throws(ConfigError) -> String {
        guard let value = try string(key), !value.isEmpty else { throw ConfigError(path: child(key), "is required") }
        return value
    }

    func bool(_ key: String) throws(ConfigError) -> Bool? {
        guard let node = node(key) else { return nil }
        guard let value = node.bool else { throw ConfigError(path: child(key), "expected true or false") }
        return value
    }

    func int(_ key: String, in range: ClosedRange<Int>) throws(ConfigError) -> Int? {
        guard let node = node(key) else { return nil }
        guard let value = node.int else { throw ConfigError(path: child(key), "expected an integer") }
        guard range.contains(value) else {
            throw ConfigError(path: child(key), "must be between \(range.lowerBound) and \(range.upperBound)")
        }
        return value
    }

    func double(_ key: String, in range: ClosedRange<Double>) throws(ConfigError) -> Double? {
        guard let node = node(key) else { return nil }
        guard let value = node.float ?? node.int.map(Double.init) else { throw ConfigError(path: child(key), "expected a number") }
        guard range.contains(value) else {
            throw ConfigError(path: child(key), "must be between \(range.lowerBound) and \(range.upperBound)")
        }
        return value
    }

    /// A USD-per-million-tokens price, parsed exactly from its decimal text.
    func money(_ key: String, optional: Bool = false) throws(ConfigError) -> NanoUSD {
        guard let text = try string(key) else {
            if optional { return .zero }
            throw ConfigError(path: child(key), "is required (USD per million tokens)")
        }
        guard let value = NanoUSD(usd: text) else {
            throw ConfigError(path: child(key), "must be a non-negative decimal amount of USD per million tokens, got '\(text)'")
        }
        return value
    }

    func mapping(_ key: String) throws(ConfigError) -> MappingReader? {
        guard let node = node(key) else { return nil }
        return try MappingReader(node, path: child(key))
    }

    func sequence(_ key: String) throws(ConfigError) -> [Node]? {
        guard let node = node(key) else { return nil }
        guard let sequence = node.sequence else { throw ConfigError(path: child(key), "expected a list") }
        return Array(sequence)
    }

    /// The keys, in file order.
    var keys: [String] { order }

    /// Every member as a nested mapping reader, in file order.
    func entries() throws(ConfigError) -> [(String, MappingReader)] {
        var result: [(String, MappingReader)] = []
        for name in order {
            used.insert(name)
            guard let node = members[name] else { continue }
            result.append((name, try MappingReader(node, path: child(name))))
        }
        return result
    }

    /// Throws when a key was never read: a misspelt option must not be silently ignored.
    func finish() throws(ConfigError) {
        if let unknown = order.first(where: { !used.contains($0) }) {
            throw ConfigError(path: child(unknown), "unknown key")
        }
    }
}

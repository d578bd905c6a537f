import SwitchyardModels
import Yams

extension MappingReader {
    /// A string or a list of strings, as a set (YAML `tier: free` or `tier: [free, trial]`).
    func stringSet(_ key: String) throws(ConfigError) -> Set<String>? {
        guard has(key) else { return nil }
        if let list = try? sequence(key) {
            var values = Set<String>()
            for (offset, node) in list.enumerated() {
                guard let value = node.scalar?.string, !value.isEmpty else {
                    throw ConfigError(path: "\(child(key))[\(offset)]", "expected a non-empty string")
                }
                values.insert(value)
            }
            guard !values.isEmpty else { throw ConfigError(path: child(key), "must name at least one value") }
            return values
        }
        guard let value = try string(key), !value.isEmpty else { throw ConfigError(path: child(key), "expected a string or a list") }
        return [value]
    }
}

extension ConfigLoader {
    /// A `routes:` section on its own (as `switchyard load` scenarios carry it), added to `config`'s routes.
    public static func parseRoutesSection(yaml: String, path: String, into config: inout GatewayConfig) throws(ConfigError) {
        let node: Node
        do {
            guard let parsed = try Yams.compose(yaml: yaml) else { return }
            node = parsed
        } catch {
            throw ConfigError(path: path, "not valid YAML: \(error)")
        }
        try parseRoutes(try MappingReader(node, path: path), config: &config)
    }

    /// The `routes:` section, read once `models` is known (a rule names a model).
    static func parseRoutes(_ routes: MappingReader, config: inout GatewayConfig) throws(ConfigError) {
        for (name, reader) in try routes.entries() {
            guard config.models[name] == nil else {
                throw ConfigError(path: reader.path, "is also a model's name: a public name is a model or a route, not both")
            }
            let maxTokens = try parseOutputLimit(reader)
            if let exact = try reader.bool("exact_cache"), !exact { config.cache.exactOff.insert(name) }
            if let semantic = try reader.bool("semantic_cache"), !semantic { config.cache.semanticOff.insert(name) }
            if let seconds = try reader.double("cache_ttl_seconds", in: 0...(365 * 86400)) {
                config.cache.modelTTL[name] = .milliseconds(Int64(seconds * 1000))
            }
            guard let list = try reader.sequence("rules"), !list.isEmpty else {
                throw ConfigError(path: reader.child("rules"), "is required: a list of rules, the last without 'when'")
            }
            var rules: [RouteRule] = []
            for (offset, node) in list.enumerated() {
                let rule = try MappingReader(node, path: "\(reader.child("rules"))[\(offset)]")
                let ruleName = try rule.string("name") ?? "rule\(offset + 1)"
                guard !ruleName.isEmpty, !ruleName.contains("/"), ruleName.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
                    throw ConfigError(path: rule.child("name"), "must be printable ASCII without spaces or '/'")
                }
                guard !rules.contains(where: { $0.name == ruleName }) else {
                    throw ConfigError(path: rule.child("name"), "duplicate rule name '\(ruleName)'")
                }
                if let earlier = rules.last, earlier.match.matchesEverything {
                    throw ConfigError(path: rule.path, "is never reached: rule '\(earlier.name)' before it matches every request")
                }
                func known(_ model: String, at path: String) throws(ConfigError) {
                    guard config.models[model] == nil else { return }
                    let hint = config.routes[model] != nil || model == name
                        ? "'\(model)' is a route; a rule picks a model"
                        : "unknown model '\(model)' (known: \(config.models.keys.sorted().joined(separator: ", ")))"
                    throw ConfigError(path: path, hint)
                }
                let target: RouteTarget
                if let ladder = try rule.mapping("complexity") {
                    guard !rule.has("model") else { throw ConfigError(path: rule.child("model"), "a rule has either model or complexity") }
                    target = try parseComplexity(ladder, known: known)
                } else if let cascade = try rule.mapping("cascade") {
                    guard !rule.has("model") else { throw ConfigError(path: rule.child("model"), "a rule has either model or cascade") }
                    guard let list = try cascade.sequence("models"), list.count == 2,
                          let cheap = list[0].scalar?.string, let strong = list[1].scalar?.string else {
                        throw ConfigError(path: cascade.child("models"), "must name two models: the cheaper first")
                    }
                    try known(cheap, at: "\(cascade.child("models"))[0]")
                    try known(strong, at: "\(cascade.child("models"))[1]")
                    guard let threshold = try cascade.double("threshold", in: 0...1) else {
                        throw ConfigError(path: cascade.child("threshold"), "is required: the confidence (0…1) at which the cheap answer is kept")
                    }
                    try cascade.finish()
                    target = .cascade(cheap: cheap, strong: strong, threshold: threshold)
                } else {
                    let model = try rule.requiredString("model")
                    try known(model, at: rule.child("model"))
                    target = .model(model)
                }
                var match = RuleMatch()
                if let when = try rule.mapping("when") { match = try parseMatch(when) }
                rules.append(RouteRule(name: ruleName, match: match, target: target, maxTokens: try parseOutputLimit(rule)))
                try rule.finish()
            }
            guard rules.last?.match.matchesEverything == true else {
                throw ConfigError(path: reader.child("rules"), "the last rule must have no 'when', so that every request is served")
            }
            let batch = try parseBatchPolicy(reader)
            if batch == .auto {
                for model in Set(rules.flatMap(\.target.models)).sorted() {
                    guard let route = config.models[model], config.providers[route.provider]?.kind.hasBatchAPI != false,
                          !(config.deployments[model] ?? []).contains(where: { config.providers[$0.provider]?.kind.hasBatchAPI == false })
                    else { throw ConfigError(path: reader.child("batch"), "model '\(model)' is served by a provider without a batch API") }
                }
            }
            var route = RouteConfig(name: name, rules: rules, maxTokens: maxTokens, batch: batch)
            if let reference = try reader.string("reference") {
                guard config.models[reference] != nil else {
                    throw ConfigError(path: reader.child("reference"),
                                      "unknown model '\(reference)' (known: \(config.models.keys.sorted().joined(separator: ", ")))")
                }
                route.reference = reference
            } else {
                route.reference = route.referenceModel(in: config.models)
            }
            try reader.finish()
            config.routes[name] = route
        }
    }

    /// `complexity: {models: [cheap, middle, strong], thresholds: [0.5, 0.8]}`.
    static func parseComplexity(_ ladder: MappingReader, known: (String, String) throws(ConfigError) -> Void) throws(ConfigError)
        -> RouteTarget
    {
        guard let list = try ladder.sequence("models") else {
            throw ConfigError(path: ladder.child("models"), "is required: two or three models, cheapest first")
        }
        var models: [String] = []
        for (offset, node) in list.enumerated() {
            let path = "\(ladder.child("models"))[\(offset)]"
            guard let model = node.scalar?.string, !model.isEmpty else { throw ConfigError(path: path, "expected a model name") }
            try known(model, path)
            models.append(model)
        }
        guard (2...3).contains(models.count) else { throw ConfigError(path: ladder.child("models"), "must name two or three models") }
        guard let values = try ladder.sequence("thresholds") else {
            throw ConfigError(path: ladder.child("thresholds"), "is required: one fewer than the models, ascending in 0…1")
        }
        var thresholds: [Double] = []
        for (offset, node) in values.enumerated() {
            let path = "\(ladder.child("thresholds"))[\(offset)]"
            guard let value = node.float ?? node.int.map(Double.init), value > 0, value < 1 else {
                throw ConfigError(path: path, "must be a number between 0 and 1 (the share of prompts below the step)")
            }
            if let previous = thresholds.last, value <= previous {
                throw ConfigError(path: path, "thresholds must ascend (\(value) after \(previous))")
            }
            thresholds.append(value)
        }
        guard thresholds.count == models.count - 1 else {
            throw ConfigError(path: ladder.child("thresholds"), "must number one fewer than the models (\(models.count - 1))")
        }
        try ladder.finish()
        return .complexity(models: models, thresholds: thresholds)
    }

    static func parseMatch(_ when: MappingReader) throws(ConfigError) -> RuleMatch {
        var match = RuleMatch()
        match.tiers = try when.stringSet("tier")
        match.features = try when.stringSet("feature")
        if let format = try when.string("format") {
            switch format {
            case "openai": match.format = .openAI
            case "anthropic": match.format = .anthropic
            default: throw ConfigError(path: when.child("format"), "must be openai or anthropic")
            }
        }
        match.tools = try when.bool("tools")
        match.images = try when.bool("images")
        if let length = try when.mapping("prompt_tokens") {
            let minimum = try length.int("min", in: 0...100_000_000) ?? 0
            let maximum = try length.int("max", in: 0...100_000_000) ?? 100_000_000
            guard minimum <= maximum else { throw ConfigError(path: length.path, "min must not exceed max") }
            try length.finish()
            match.promptTokens = minimum...maximum
        }
        try when.finish()
        guard !match.matchesEverything else {
            throw ConfigError(path: when.path, "sets no condition (known: tier, feature, format, tools, images, prompt_tokens)")
        }
        return match
    }

    /// `max_tokens: {default: N, cap: M}`.
    static func parseOutputLimit(_ reader: MappingReader) throws(ConfigError) -> OutputLimit? {
        guard let limit = try reader.mapping("max_tokens") else { return nil }
        let result = OutputLimit(defaultTokens: try limit.int("default", in: 1...1_000_000), cap: try limit.int("cap", in: 1...1_000_000))
        try limit.finish()
        if let value = result.defaultTokens, let cap = result.cap, value > cap {
            throw ConfigError(path: limit.child("default"), "must not exceed cap (\(cap))")
        }
        guard result.defaultTokens != nil || result.cap != nil else {
            throw ConfigError(path: limit.path, "sets neither default nor cap")
        }
        return result
    }
}

extension ConfigLoader {
    /// `batch: auto | never` of a model or a route; nil when absent.
    static func parseBatchPolicy(_ reader: MappingReader) throws(ConfigError) -> BatchPolicy? {
        guard let text = try reader.string("batch") else { return nil }
        guard let policy = BatchPolicy(rawValue: text) else { throw ConfigError(path: reader.child("batch"), "must be auto or never") }
        return policy
    }
}

import Synchronization

/// The providers' prompt caching, simulated per API key and model with a 5-minute lifetime refreshed on each hit.
///
/// The prompt is read in the providers' cache order (tools, system, messages), block by block, and a prefix is
/// cacheable at a breakpoint:
/// - Anthropic: after each block marked `cache_control`, when the prefix has at least the model's minimum (1024
///   tokens, 2048 for Haiku). The first request writes it (`cache_creation_input_tokens`); a repeat within 5 minutes
///   reads it (`cache_read_input_tokens`), and input tokens count only the rest.
/// - OpenAI: automatically after any block once the prefix has 1024 tokens; a repeat reports the cached prefix in
///   `prompt_tokens_details.cached_tokens`, rounded down to a multiple of 128.
final class MockPromptCache: Sendable {
    struct Breakpoint: Hashable {
        /// Prompt tokens up to and including the block.
        var tokens: Int
        var hash: UInt64
    }

    static let lifetime = Duration.seconds(300)
    private let entries = Mutex([String: ContinuousClock.Instant]())
    /// Prefixes remembered at once, over all keys.
    static let maximumEntries = 200_000

    /// The cacheable prefixes of a request, shortest first.
    static func breakpoints(_ request: MockJSON, anthropic: Bool, model: String) -> [Breakpoint] {
        var blocks: [(strings: [String], marked: Bool, messageStart: Bool)] = []
        func add(_ value: MockJSON?, messageStart: Bool = false) {
            guard let value else { return }
            if case .array(let items) = value, !items.isEmpty {
                for (index, item) in items.enumerated() {
                    var strings: [String] = []
                    item.collectStrings(into: &strings)
                    blocks.append((strings, item["cache_control"] != nil, messageStart && index == 0))
                }
            } else {
                var strings: [String] = []
                value.collectStrings(into: &strings)
                blocks.append((strings, value["cache_control"] != nil, messageStart))
            }
        }
        add(request["tools"])
        add(request["system"])
        for message in request["messages"]?.array ?? [] {
            // A message's role and its content blocks; the 3 tokens per message count at its first block.
            if case .array = message["content"] {
                add(message["content"], messageStart: true)
                if let role = message["role"]?.string { blocks.append(([role], false, false)) }
            } else {
                var strings: [String] = []
                message.collectStrings(into: &strings)
                blocks.append((strings, message["cache_control"] != nil, true))
            }
        }
        let minimum = anthropic ? (MockModel.defaults.first { $0.name == model }?.promptCacheMinimumTokens ?? 1024) : 1024
        var tokens = 0
        var hash: UInt64 = SplitMix64.hash(model.utf8)
        var result: [Breakpoint] = []
        for block in blocks {
            tokens += block.strings.reduce(0) { $0 + MockText.countTokens($1) } + (block.messageStart ? 3 : 0)
            for string in block.strings { hash = SplitMix64.hash(String(hash).utf8 + [0] + string.utf8) }
            if tokens >= minimum && (anthropic ? block.marked : true) { result.append(Breakpoint(tokens: tokens, hash: hash)) }
        }
        return result
    }

    /// Looks the breakpoints up for `key` and stores them: the tokens read from the cache and the tokens written.
    func resolve(_ breakpoints: [Breakpoint], key: String, now: ContinuousClock.Instant = .now) -> (read: Int, written: Int) {
        guard let longest = breakpoints.last else { return (0, 0) }
        return entries.withLock { entries in
            var read = 0
            for point in breakpoints {
                let name = "\(key)\u{0}\(point.hash)"
                if let expiry = entries[name], expiry > now { read = max(read, point.tokens) }
                entries[name] = now + Self.lifetime
            }
            if entries.count > Self.maximumEntries {
                entries = entries.filter { $0.value > now }
                // Still full of live prefixes (callers choose them): keep the most recently written half.
                if entries.count > Self.maximumEntries {
                    let kept = entries.sorted { $0.value > $1.value }.prefix(Self.maximumEntries / 2)
                    entries = Dictionary(uniqueKeysWithValues: kept.map { ($0.key, $0.value) })
                }
            }
            return (read, longest.tokens - read)
        }
    }
}

/// Which recorded answer a mock model gives: the weak model's (cheap tier) or the strong one's (expensive tier).
public enum MockTier: String, Sendable, Hashable {
    case cheap, expensive
}

/// Answers recorded from real models for known prompts (RouteLLM's GSM8K responses: Mixtral's for the cheap tier,
/// GPT-4's for the expensive one), so a load run through a route measures quality and cost together. Looked up by
/// the last user message's text exactly.
public struct MockRecordedAnswers: Sendable {
    public struct Pair: Sendable, Hashable {
        public var cheap: String
        public var expensive: String

        public init(cheap: String, expensive: String) {
            self.cheap = cheap
            self.expensive = expensive
        }
    }

    public let answers: [String: Pair]

    public init(answers: [String: Pair]) {
        self.answers = answers
    }

    func answer(for request: MockJSON, tier: MockTier) -> String? {
        guard let last = request["messages"]?.array?.last, last["role"]?.string == "user" else { return nil }
        var texts: [String] = []
        last["content"]?.collectText(into: &texts)
        guard let pair = answers[texts.joined(separator: "\n")] else { return nil }
        return tier == .cheap ? pair.cheap : pair.expensive
    }
}

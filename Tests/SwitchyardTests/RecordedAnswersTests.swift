import Foundation
import Logging
import LoadTest
import MockProvider
import Routing
import Server
import SwitchyardCore
import SwitchyardModels
import SwitchyardTestKit
import Testing

/// The mock's recorded answers (the cheap tier gets the weak model's, the expensive tier the strong model's), and
/// the load harness grading what it was served.
@Suite struct RecordedAnswersTests {
    static let dataDirectory = ComplexityClassifierTests.dataDirectory

    @Test func theMockAnswersARecordedPromptWithItsTiersAnswerInBothAPIsStreamedOrNot() async throws {
        let recorded = try loadRecordedAnswers(directory: Self.dataDirectory)
        let examples = try RoutingData.load(directory: Self.dataDirectory).filter { $0.dataset == "gsm8k" }
        let example = try #require(examples.first { $0.weakResponse != $0.strongResponse })
        let prompts = RecordedPrompts(examples: examples)
        try await MockLimitsTests().withMock(MockSettings(latencyScale: 0, requireAPIKey: false, recordedAnswers: recorded)) { url in
            let question = String(decoding: try JSONSerialization.data(withJSONObject: [example.prompt]), as: UTF8.self).dropFirst().dropLast()
            for (model, api, expected) in [("gpt-4o-mini", "openai", example.weakResponse), ("gpt-4o", "openai", example.strongResponse),
                                           ("claude-haiku-4-5", "anthropic", example.weakResponse),
                                           ("claude-opus-4-1", "anthropic", example.strongResponse)] {
                for stream in [false, true] {
                    let body = #"{"model":"\#(model)","max_tokens":1024,"stream":\#(stream),"messages":[{"role":"user","content":\#(question)}]}"#
                    let response = try await send("\(url)/v1/\(api == "openai" ? "chat/completions" : "messages")", body: body)
                    #expect(response.status == 200, "\(response.body)")
                    let text = try Self.text(response.body, stream: stream)
                    #expect(text.trimmingCharacters(in: .whitespacesAndNewlines)
                        == expected?.trimmingCharacters(in: .whitespacesAndNewlines), "\(model) stream \(stream)")
                    let correct = model.contains("mini") || model.contains("haiku") ? example.weakCorrect : example.strongCorrect
                    #expect(prompts.grade(prompt: example.prompt, answer: text) == correct)
                }
            }
            // A prompt that was not recorded gets the mock's own text, which grades as neither answer.
            let other = try await send("\(url)/v1/chat/completions", body: #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#)
            #expect(prompts.grade(prompt: example.prompt, answer: try Self.text(other.body, stream: false)) == nil)
        }
    }

    /// The answer text of a whole answer or a stream, in either API.
    static func text(_ body: String, stream: Bool) throws -> String {
        guard stream else {
            let json = try JSONValue.parse(body)
            return json["choices"]?.arrayValue?.first?["message"]?["content"]?.stringValue
                ?? json["content"]?.arrayValue?.compactMap { $0["text"]?.stringValue }.joined() ?? ""
        }
        var text = ""
        for line in body.split(separator: "\n") where line.hasPrefix("data: ") {
            guard let json = try? JSONValue.parse(String(line.dropFirst(6))) else { continue }
            text += json["choices"]?.arrayValue?.first?["delta"]?["content"]?.stringValue ?? json["delta"]?["text"]?.stringValue ?? ""
        }
        return text
    }

    @Test func theRoutingQualityScenarioComparesModelsWithItsOwnRouteAndNoCaches() throws {
        let file = EmbeddingsTests.projectRoot.appendingPathComponent("loadtests/routing-quality.yaml").path
        let scenario = try LoadScenario(yaml: try String(contentsOfFile: file, encoding: .utf8), file: file)
        #expect(scenario.compareModels == ["claude-opus-4-1", "claude-haiku-4-5", "complexity", "auto-cascade"])
        #expect(scenario.gateway.routes["complexity"] != nil && scenario.gateway.routes["auto"] != nil)
        #expect(!scenario.gateway.cache.exactEnabled && !scenario.gateway.cache.semanticEnabled)
        #expect(scenario.mock.answers != nil)
        #expect(scenario.plan.prompts.recorded?.prompts.count == 1307)
        #expect(throws: LoadError.self) { try LoadScenario(yaml: "rate: 5\nrecorded_prompts: mmlu") }
        #expect(throws: LoadError.self) { try LoadScenario(yaml: "rate: 5\nroutes: {r: {rules: [{model: nope}]}}") }
    }
}

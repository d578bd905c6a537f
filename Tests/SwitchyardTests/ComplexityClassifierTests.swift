import Foundation
import Routing
import SwitchyardCore
import SwitchyardModels
import Testing

/// The router evaluation harness against the reference baselines, and the classifier's training, scoring and file.
@Suite struct ComplexityClassifierTests {
    static let dataDirectory = EmbeddingsTests.projectRoot.appendingPathComponent("../shared/data/routing").path

    @Test func theHarnessReproducesTheReferenceBaselines() throws {
        let examples = try RoutingData.load(directory: Self.dataDirectory)
        // reference_baselines.json: GSM8K n=1307, MMLU n=14037 once the contaminated prompts are removed.
        #expect(examples.filter { $0.dataset == "gsm8k" }.count == 1307)
        #expect(examples.filter { $0.dataset == "mmlu" }.count == 14037)
        let reference = try JSONValue.parse(try Data(contentsOf: URL(fileURLWithPath: Self.dataDirectory + "/reference_baselines.json")))
        for (dataset, key) in [("gsm8k", "GSM8K"), ("mmlu", "MMLU")] {
            let rows = examples.filter { $0.dataset == dataset }
            let weak = rows.map { $0.weakCorrect ? 1.0 : 0 }, strong = rows.map { $0.strongCorrect ? 1.0 : 0 }
            let cases: [(String, [Double])] = [
                ("longer_prompt_to_strong", rows.map { Double($0.prompt.unicodeScalars.count) }),
                ("oracle", RouterEvaluation.oracleScores(weak: weak, strong: strong)),
            ]
            for (name, scores) in cases {
                let summary = RouterEvaluation(scores: scores, weak: weak, strong: strong).summary
                let expected = try #require(reference[key]?[name])
                #expect(abs(summary.apgr - (expected["APGR"]?.doubleValue ?? -1)) < 0.0006, "\(dataset) \(name) \(summary)")
                #expect(abs(summary.cpt50 - (expected["CPT50"]?.doubleValue ?? -1)) < 1e-9, "\(dataset) \(name) \(summary)")
                #expect(abs(summary.cpt80 - (expected["CPT80"]?.doubleValue ?? -1)) < 1e-9, "\(dataset) \(name) \(summary)")
                #expect(abs(summary.strongShareAt95 - (expected["strong_frac_at_95pct_of_strong"]?.doubleValue ?? -1)) < 1e-9,
                        "\(dataset) \(name) \(summary)")
            }
            let means = try #require(reference[key]?["strong_mean"]?.doubleValue)
            #expect(abs(RouterEvaluation(scores: weak, weak: weak, strong: strong).strongMean - means) < 0.00006)
        }
    }

    @Test func quotedFieldsWithCommasQuotesAndLineBreaksParse() throws {
        let rows = try CSVProbe.parse("a,b\n\"x, \"\"y\"\"\nz\",2\n")
        #expect(rows == [["a", "b"], ["x, \"y\"\nz", "2"]])
    }

    /// Synthetic prompts whose difficulty is carried by one embedding direction: the trained score must rank the
    /// hard ones above the easy ones, and survive its own file.
    static func synthetic(count: Int) -> ([RoutingExample], [[Float]]) {
        var examples: [RoutingExample] = []
        var embeddings: [[Float]] = []
        var state: UInt64 = 7
        func next() -> Double {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Double(state >> 11) / Double(1 << 53)
        }
        for index in 0..<count {
            let hard = index % 2 == 0
            var vector = (0..<ComplexityClassifier.embeddingDimension).map { _ in Float(next() - 0.5) * 0.1 }
            vector[3] += hard ? 0.5 : -0.5
            embeddings.append(vector)
            // The weak model fails the hard ones more often; the strong one rarely fails.
            examples.append(RoutingExample(dataset: "synthetic", domain: "s", prompt: hard ? "a long hard question \(index)?" : "easy \(index)",
                                           weakCorrect: hard ? next() < 0.2 : next() < 0.9, strongCorrect: next() < 0.95))
        }
        return (examples, embeddings)
    }

    @Test func aTrainedClassifierRanksHardPromptsHigherAndRoundTripsItsFile() throws {
        let (examples, embeddings) = Self.synthetic(count: 400)
        let classifier = ComplexityClassifier.train(examples, embeddings: embeddings,
                                                    settings: LogisticRegression.Settings(iterations: 200))
        let scores = zip(examples, embeddings).map { classifier.score(embedding: $1, text: $0.prompt) ?? 0 }
        let hard: [Double] = stride(from: 0, to: 400, by: 2).map { scores[$0] }
        let easy: [Double] = stride(from: 1, to: 400, by: 2).map { scores[$0] }
        let hardMean = hard.reduce(0, +) / 200, easyMean = easy.reduce(0, +) / 200
        #expect(hardMean > easyMean + 0.3, "\(hardMean) \(easyMean)")
        let top = classifier.percentile(of: hard.max() ?? 0), bottom = classifier.percentile(of: easy.min() ?? 0)
        #expect(top > 0.9 && bottom < 0.1, "\(top) \(bottom)")
        #expect(classifier.score(embedding: [1, 2, 3], text: "x") == nil)

        let text = classifier.fileText()
        let loaded = try ComplexityClassifier(json: try JSONValue.parse(Array(text.utf8)))
        #expect(loaded.fileText() == text)
        for index in 0..<20 {
            let original = try #require(classifier.score(embedding: embeddings[index], text: examples[index].prompt))
            let reloaded = try #require(loaded.score(embedding: embeddings[index], text: examples[index].prompt))
            #expect(abs(original - reloaded) < 1e-4)
        }
        // The same data trains the same file.
        #expect(ComplexityClassifier.train(examples, embeddings: embeddings, settings: LogisticRegression.Settings(iterations: 200)).fileText() == text)
    }

    @Test(arguments: [
        (#"{"format":"something-else","version":1}"#, "not a switchyard-complexity-classifier file"),
        (#"{"format":"switchyard-complexity-classifier","version":2}"#, "version 2 is not 1"),
        (#"{"format":"switchyard-complexity-classifier","version":1,"embedding":{"model":"bge-small","dimension":384}}"#,
         "trained on another embedding"),
    ])
    func badFilesAreRefusedWithTheReason(_ testCase: (String, String)) throws {
        #expect(throws: ClassifierFileError.self) { try ComplexityClassifier(json: try JSONValue.parse(Array(testCase.0.utf8))) }
        do {
            _ = try ComplexityClassifier(json: try JSONValue.parse(Array(testCase.0.utf8)))
        } catch let error as ClassifierFileError {
            #expect(error.description.contains(testCase.1), "\(error)")
        }
    }

    @Test func aTruncatedOrTamperedFileIsRefused() throws {
        let (examples, embeddings) = Self.synthetic(count: 40)
        let text = ComplexityClassifier.train(examples, embeddings: embeddings, settings: LogisticRegression.Settings(iterations: 5)).fileText()
        var json = try JSONValue.parse(Array(text.utf8))
        guard case .object(var members) = json else { Issue.record("not an object"); return }
        members["mean"] = .array([.double(1)])
        json = .object(members)
        #expect(throws: ClassifierFileError.self) { try ComplexityClassifier(json: json) }
        members["mean"] = .array(Array(repeating: .double(.nan), count: 384 + PromptFeatures.names.count))
        #expect(throws: ClassifierFileError.self) { try ComplexityClassifier(json: .object(members)) }
    }

    @Test func textFeaturesCountWhatTheyName() {
        let features = PromptFeatures.compute("It costs $3.50 per 2 items.\nHow much is 1,000 items?")
        #expect(features.count == PromptFeatures.names.count)
        #expect(abs(features[1] - Float(log1p(3.0))) < 1e-6)  // 3.50, 2, 1,000
        #expect(features[3] == 1)  // one newline
        #expect(abs(features[5] - Float(log1p(2.0))) < 1e-6)  // two sentences
        #expect(abs(features[4] - Float(log1p(1.0))) < 1e-6)  // "$"
        #expect(features[6] == 0 && features[7] == 1 && features[8] == 0)
        let code = PromptFeatures.compute("Fix `let x = f(); if y { z }`", turns: 3, tools: 2)
        #expect(abs(code[6] - Float(log1p(5.0))) < 1e-6)  // two backticks, ';', '{', '}'
        #expect(code[7] == 3 && code[8] == 2)
    }
}

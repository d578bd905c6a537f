import ArgumentParser
import Embeddings
import Foundation
import Routing
import SwitchyardCore

/// What both router commands share: the evaluation data and the prompts' embeddings (kept in the model cache
/// folder, keyed by the prompts' hash: embedding 15,000 prompts takes minutes).
struct RouterData {
    let examples: [RoutingExample]
    let embeddings: [[Float]]

    static func load(data: String, modelDirectory: String?) throws -> RouterData {
        let examples: [RoutingExample]
        do {
            examples = try RoutingData.load(directory: data)
        } catch {
            throw ValidationError(error.description)
        }
        let store = ModelStore(root: modelDirectory)
        let encoder = try CachedEmbeddings.encoder(store)
        let embeddings = CachedEmbeddings.embed(examples.map(\.prompt), encoder: encoder, root: store.root, label: "router")
        return RouterData(examples: examples, embeddings: embeddings)
    }
}

/// Fits the complexity classifier on all of the routing data and writes its file.
struct TrainRouter: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train-router",
        abstract: "Fit the on-device complexity classifier on ../shared/data/routing and write its file.")

    @Option(help: "Folder with the routing evaluation files.") var data = "../shared/data/routing"
    @Option(help: "Model cache folder.") var dir: String?
    @Option(help: "Where to write the classifier file.") var output = "Sources/Routing/complexity-v1.json"
    @Option(help: "L2 penalty.") var l2 = 1.0
    @Option(help: "Adam iterations.") var iterations = 300
    @Option(help: "Write nothing: train, then compare with this file (the committed one) and fail if they differ.")
    var check: String?

    func run() throws {
        let loaded = try RouterData.load(data: data, modelDirectory: dir)
        let settings = LogisticRegression.Settings(l2: l2, iterations: iterations)
        let classifier = ComplexityClassifier.train(loaded.examples, embeddings: loaded.embeddings, settings: settings)
        if let check {
            let committed: ComplexityClassifier
            do {
                committed = try ComplexityClassifier.load(path: check)
            } catch {
                throw ValidationError(error.description)
            }
            // The embeddings' last bits depend on the CPU's kernels (AVX-512 or AVX2), so numbers are compared
            // within a tolerance; the training data must be the same exactly.
            let difference = committed.largestDifference(from: classifier)
            let same = committed.training.dataSHA256 == classifier.training.dataSHA256 && difference <= 1e-3
            print("\(check): training data \(committed.training.dataSHA256 == classifier.training.dataSHA256 ? "identical" : "DIFFERENT"), "
                  + "largest difference in any weight, scale or quantile \(difference) (tolerance 0.001): \(same ? "reproduced" : "NOT reproduced")")
            if !same { throw ExitCode.failure }
            return
        }
        try classifier.fileText().write(toFile: output, atomically: true, encoding: .utf8)
        print("wrote \(output): \(loaded.examples.count) prompts, data sha256 \(classifier.training.dataSHA256.prefix(16))…")
    }
}

/// Reports the router on held-out prompts only, after checking the harness against the reference baselines.
struct RouterEval: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "router",
        abstract: "Held-out APGR, CPT(50%), CPT(80%) and the strong-call share at 95% of the strong model's quality.")

    @Option(help: "Folder with the routing evaluation files.") var data = "../shared/data/routing"
    @Option(help: "Model cache folder.") var dir: String?
    @Option(help: "Folds for cross-fitting (each prompt is scored by a model trained without it).") var folds = 5
    @Option(help: "Write the results as JSON to this file.") var json: String?
    @Option(help: "Requests a day for the cost table (the seed's table: all-opus, all-sonnet, all-haiku, routed, cascaded).")
    var volume: Int?
    @Option(help: "The semantic cache's hit rate applied in the cost table (measured by `switchyard eval semantic-cache`: 0.347 at 0.94).")
    var semanticHitRate = 0.347
    @Option(help: "What a weak-model call costs as a share of a strong one (an assumption for the cost columns: the shared data prices GPT-4 Turbo, not Mixtral).")
    var weakCostRatio = 0.04

    func run() throws {
        let loaded = try RouterData.load(data: data, modelDirectory: dir)
        let examples = loaded.examples
        let reference = try RouterReference.load("\(data)/reference_baselines.json")
        var failures = 0
        var results: [String: Any] = [:]
        print("Harness check against reference_baselines.json (random: mean of 20 seeds, ±0.03; the others ±0.005):")
        for dataset in ["gsm8k", "mmlu"] {
            let rows = examples.indices.filter { examples[$0].dataset == dataset }
            let weak = rows.map { examples[$0].weakCorrect ? 1.0 : 0 }, strong = rows.map { examples[$0].strongCorrect ? 1.0 : 0 }
            let longer = RouterEvaluation(scores: rows.map { Double(examples[$0].prompt.unicodeScalars.count) }, weak: weak, strong: strong).summary
            let oracle = RouterEvaluation(scores: RouterEvaluation.oracleScores(weak: weak, strong: strong), weak: weak, strong: strong).summary
            let random = RouterEvaluation.Summary.mean((0..<20).map {
                RouterEvaluation(scores: RouterEvaluation.randomScores(count: rows.count, seed: UInt64($0)), weak: weak, strong: strong).summary
            })
            for (name, measured, tolerance) in [("longer_prompt_to_strong", longer, 0.005), ("oracle", oracle, 0.005),
                                                ("random_mean_of_20_seeds", random, 0.03)] {
                let expected = reference[dataset]?[name]
                let ok = expected.map { RouterReference.close(measured, $0, tolerance: tolerance) } ?? false
                if !ok { failures += 1 }
                print("  \(dataset) \(name): \(RouterReference.format(measured)) reference \(expected.map(RouterReference.format) ?? "missing") \(ok ? "ok" : "MISMATCH")")
            }
        }
        guard failures == 0 else { throw ValidationError("the harness disagrees with reference_baselines.json in \(failures) rows") }

        // Held out by prompt: k folds over all prompts (both sets together, as the gateway's classifier is trained).
        let byPrompt = crossFit(examples, loaded.embeddings, groups: examples.indices.map { $0 % folds }, folds: folds)
        // MMLU held out by subject: a subject's prompts are scored by a model that saw none of them.
        let subjects = Array(Set(examples.filter { $0.dataset == "mmlu" }.map(\.domain))).sorted()
        let subjectFold = Dictionary(uniqueKeysWithValues: subjects.enumerated().map { ($1, $0 % folds) })
        let byDomain = crossFit(examples, loaded.embeddings,
                                groups: examples.indices.map { examples[$0].dataset == "mmlu" ? subjectFold[examples[$0].domain] ?? 0 : $0 % folds },
                                folds: folds)
        print("\nComplexity classifier, held out (\(folds)-fold; score p_strong − p_weak):")
        print("| set | prompts | APGR | CPT(50%) | CPT(80%) | strong share at 95% | quality there | longer-prompt share at 95% |")
        print("|---|---|---|---|---|---|---|---|")
        for (label, dataset, scores) in [("GSM8K", "gsm8k", byPrompt), ("MMLU", "mmlu", byPrompt), ("MMLU, held-out subjects", "mmlu", byDomain)] {
            let rows = examples.indices.filter { examples[$0].dataset == dataset }
            let weak = rows.map { examples[$0].weakCorrect ? 1.0 : 0 }, strong = rows.map { examples[$0].strongCorrect ? 1.0 : 0 }
            let evaluation = RouterEvaluation(scores: rows.map { scores[$0] }, weak: weak, strong: strong)
            let summary = evaluation.summary
            let longer = RouterEvaluation(scores: rows.map { Double(examples[$0].prompt.unicodeScalars.count) }, weak: weak, strong: strong).summary
            let quality = evaluation.curve[Int((summary.strongShareAt95 * 100).rounded())]
            print("| \(label) | \(rows.count) | \(String(format: "%.3f", summary.apgr)) | \(String(format: "%.2f", summary.cpt50)) | "
                  + "\(String(format: "%.2f", summary.cpt80)) | \(String(format: "%.2f", summary.strongShareAt95)) | "
                  + "\(String(format: "%.4f", quality)) (strong alone \(String(format: "%.4f", evaluation.strongMean))) | "
                  + "\(String(format: "%.2f", longer.strongShareAt95)) |")
            results[label] = ["apgr": summary.apgr, "cpt50": summary.cpt50, "cpt80": summary.cpt80,
                              "strong_share_at_95": summary.strongShareAt95, "quality_at_95": quality, "prompts": rows.count]
        }
        // The cascade on GSM8K: the weak model answers every prompt; the scorer's confidence in that answer decides
        // which are escalated (lowest confidence first). Each answer scored by a scorer trained without it.
        let gsm = examples.indices.filter { examples[$0].dataset == "gsm8k" && examples[$0].weakResponse != nil }
        var confidence = [Double](repeating: 0, count: examples.count)
        for fold in 0..<folds {
            let train = gsm.filter { $0 % folds != fold }, test = gsm.filter { $0 % folds == fold }
            guard let scorer = AnswerScorer.train(train.map { examples[$0] }, settings: LogisticRegression.Settings()) else { continue }
            for index in test {
                confidence[index] = scorer.confidence(question: examples[index].prompt, answer: examples[index].weakResponse ?? "")
            }
        }
        let weak = gsm.map { examples[$0].weakCorrect ? 1.0 : 0 }, strong = gsm.map { examples[$0].strongCorrect ? 1.0 : 0 }
        let cascade = RouterEvaluation(scores: gsm.map { -confidence[$0] }, weak: weak, strong: strong)
        let share = cascade.summary.strongShareAt95
        let preCall = results["GSM8K"].flatMap { ($0 as? [String: Any])?["strong_share_at_95"] as? Double } ?? 1
        print("\nCascade on GSM8K, held out (\(folds)-fold; the weak model answers every prompt, the lowest-confidence answers go to the strong one):")
        print("| router | strong calls at 95% of strong quality | APGR | cost of all-strong, a weak call costing \(weakCostRatio) of a strong one |")
        print("|---|---|---|---|")
        print("| cascade (answer scorer) | \(String(format: "%.2f", share)) | \(String(format: "%.3f", cascade.apgr)) | "
              + "\(String(format: "%.3f", weakCostRatio + share)) |")
        print("| pre-call classifier | \(String(format: "%.2f", preCall)) | \(String(format: "%.3f", (results["GSM8K"] as? [String: Any])?["apgr"] as? Double ?? 0)) | "
              + "\(String(format: "%.3f", preCall + (1 - preCall) * weakCostRatio)) |")
        results["GSM8K cascade"] = ["strong_share_at_95": share, "apgr": cascade.apgr, "cost_vs_all_strong": weakCostRatio + share]
        if let volume {
            printVolumeTable(volume: volume, examples: examples, results: results, cascadeShare: share,
                             cascadeQuality: cascade.curve[Int((share * 100).rounded())])
        }
        if let json {
            let data = try JSONSerialization.data(withJSONObject: results, options: [.prettyPrinted, .sortedKeys])
            try data.write(to: URL(fileURLWithPath: json))
        }
    }

    /// Cost per day and month at `volume` requests a day, at the catalog's prices, with the datasets' token counts
    /// (four UTF-8 bytes per token: prompts, and GSM8K's recorded answers; MMLU's answers are one letter). The data's
    /// weak model (Mixtral) stands for haiku and its strong one (GPT-4) for opus; quality is the data's, so sonnet,
    /// which the data does not cover, has none.
    func printVolumeTable(volume: Int, examples: [RoutingExample], results: [String: Any], cascadeShare: Double,
                          cascadeQuality: Double) {
        func price(_ name: String) -> (Double, Double) {
            let entry = DefaultCatalog.entry(named: name)
            return (Double(entry?.price.input.value ?? 0) / 1e15, Double(entry?.price.output.value ?? 0) / 1e15)
        }
        let (haiku, sonnet, opus) = (price("claude-haiku-4-5"), price("claude-sonnet-4-5"), price("claude-opus-4-1"))
        for (label, dataset) in [("GSM8K", "gsm8k"), ("MMLU", "mmlu")] {
            let rows = examples.filter { $0.dataset == dataset }
            let count = Double(max(rows.count, 1))
            let input = rows.reduce(0.0) { $0 + Double($1.prompt.utf8.count) / 4 } / count
            let weakOutput = rows.reduce(0.0) { $0 + Double($1.weakResponse?.utf8.count ?? 4) / 4 } / count
            let strongOutput = rows.reduce(0.0) { $0 + Double($1.strongResponse?.utf8.count ?? 4) / 4 } / count
            let weakQuality = rows.filter(\.weakCorrect).count, strongQuality = rows.filter(\.strongCorrect).count
            func call(_ model: (Double, Double), output: Double) -> Double { model.0 * input + model.1 * output }
            let routedShare = (results[label] as? [String: Any])?["strong_share_at_95"] as? Double ?? 1
            let routedQuality = (results[label] as? [String: Any])?["quality_at_95"] as? Double ?? 0
            let lines: [(String, Double, String)] = [
                ("all opus (strong)", call(opus, output: strongOutput), String(format: "%.3f", Double(strongQuality) / count)),
                ("all sonnet", call(sonnet, output: strongOutput), "not in the data"),
                ("all haiku (weak)", call(haiku, output: weakOutput), String(format: "%.3f", Double(weakQuality) / count)),
                ("complexity route (haiku / opus at the 95% point)",
                 routedShare * call(opus, output: strongOutput) + (1 - routedShare) * call(haiku, output: weakOutput),
                 String(format: "%.3f", routedQuality)),
            ] + (dataset == "gsm8k" ? [("cascade (haiku, then opus for \(Int((cascadeShare * 100).rounded()))%)",
                                          call(haiku, output: weakOutput) + cascadeShare * call(opus, output: strongOutput),
                                          String(format: "%.3f", cascadeQuality))] : [])
            print("\n\(label) at \(volume) requests a day (catalog prices; \(Int(input)) input tokens, \(Int(weakOutput)) / \(Int(strongOutput)) output; "
                  + "semantic cache hit rate \(semanticHitRate)):")
            print("| strategy | per day | per month (30 d) | with the semantic cache, per month | quality |")
            print("|---|---|---|---|---|")
            for (name, perRequest, quality) in lines {
                let day = perRequest * Double(volume)
                print("| \(name) | $\(String(format: "%.2f", day)) | $\(String(format: "%.0f", day * 30)) | "
                      + "$\(String(format: "%.0f", day * 30 * (1 - semanticHitRate))) | \(quality) |")
            }
        }
    }

    /// Each prompt's score from the model trained on the other groups.
    func crossFit(_ examples: [RoutingExample], _ embeddings: [[Float]], groups: [Int], folds: Int) -> [Double] {
        var scores = [Double](repeating: 0, count: examples.count)
        for fold in 0..<folds {
            let train = examples.indices.filter { groups[$0] != fold }
            let test = examples.indices.filter { groups[$0] == fold }
            guard !train.isEmpty, !test.isEmpty else { continue }
            let classifier = ComplexityClassifier.train(train.map { examples[$0] }, embeddings: train.map { embeddings[$0] })
            for index in test {
                scores[index] = classifier.score(embedding: embeddings[index], text: examples[index].prompt) ?? 0
            }
        }
        return scores
    }
}

/// `reference_baselines.json`: the random, oracle and longer-prompt routers' figures per dataset.
enum RouterReference {
    static func load(_ path: String) throws -> [String: [String: RouterEvaluation.Summary]] {
        guard let data = FileManager.default.contents(atPath: path),
              let object = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw ValidationError("cannot read \(path)")
        }
        var result: [String: [String: RouterEvaluation.Summary]] = [:]
        for (dataset, key) in [("gsm8k", "GSM8K"), ("mmlu", "MMLU")] {
            guard let set = object[key] as? [String: Any] else { continue }
            for (name, value) in set {
                guard let figures = value as? [String: Any], let apgr = figures["APGR"] as? Double, let cpt50 = figures["CPT50"] as? Double,
                      let cpt80 = figures["CPT80"] as? Double, let share = figures["strong_frac_at_95pct_of_strong"] as? Double else { continue }
                result[dataset, default: [:]][name] = RouterEvaluation.Summary(apgr: apgr, cpt50: cpt50, cpt80: cpt80, strongShareAt95: share)
            }
        }
        return result
    }

    static func close(_ a: RouterEvaluation.Summary, _ b: RouterEvaluation.Summary, tolerance: Double) -> Bool {
        abs(a.apgr - b.apgr) <= tolerance && abs(a.cpt50 - b.cpt50) <= tolerance + 1e-9
            && abs(a.cpt80 - b.cpt80) <= tolerance + 1e-9 && abs(a.strongShareAt95 - b.strongShareAt95) <= tolerance + 1e-9
    }

    static func format(_ s: RouterEvaluation.Summary) -> String {
        String(format: "APGR %.3f CPT50 %.2f CPT80 %.2f share@95 %.2f", s.apgr, s.cpt50, s.cpt80, s.strongShareAt95)
    }
}

import ArgumentParser
import Caching
import Embeddings
import Foundation
import Server
import SwitchyardCore
import SwitchyardModels

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Evaluations on the shared data (commands, not tests).", subcommands: [SemanticCacheEval.self, RouterEval.self, TokenEstimateEval.self])
}

/// Measures the semantic cache on Banking77: precision, recall and false-hit rate of labelled pairs by threshold, and
/// a replayed query stream (hit rate, hit precision, recall), each with and without verification.
struct SemanticCacheEval: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "semantic-cache")

    @Option(help: "Folder with the cache evaluation files.") var data = "../shared/data/cache"
    @Option(help: "Model cache folder.") var dir: String?
    @Option(help: "Thresholds to report, comma-separated.") var thresholds = "0.80,0.85,0.88,0.90,0.92,0.94,0.95,0.96,0.97,0.98"
    @Option(help: "Write the results as JSON to this file.") var json: String?
    @Option(help: "The project's adversarial near-miss pairs (JSON lines: kind, a, b).")
    var adversarialFile = "eval/semantic_adversarial.jsonl"
    @Option(help: "The threshold the adversarial set is reported at (the serving default).") var servingThreshold: Float = 0.94
    @Option(help: "The pair verifier's file.") var verifier = "Sources/Caching/pair-verifier-v1.json"
    @Option(help: "Shadow rates the online calibration is replayed at, comma-separated.") var shadowRates = "0.01,0.05,0.10"
    @Option(help: "The calibration's precision target.") var targetPrecision = 0.99
    @Flag(help: "Also list the GPTCache training pairs (the even ones) at cosine ≥ 0.90 that the rules refuse, with the reason.")
    var listTrainingRefusals = false
    @Option(help: "The agreement band of rules_or_learned reported: COSINE,PROBABILITY (a candidate the rules pass at that cosine or more is served at that probability or more); default: the gateway's; 'off': none.")
    var agreementBand: String?

    var agreement: (cosine: Double, probability: Double)? {
        guard let agreementBand else {
            let defaults = CacheSettings()
            return (defaults.semanticAgreementCosine, defaults.semanticAgreementProbability)
        }
        let parts = agreementBand.split(separator: ",").compactMap { Double($0) }
        guard parts.count == 2, parts.allSatisfy(\.isFinite) else { return nil }
        return (parts[0], parts[1])
    }

    func run() throws {
        let store = ModelStore(root: dir)
        let encoder: MiniLMEncoder
        do {
            encoder = try MiniLMEncoder(directory: store.modelDirectory)
        } catch {
            throw ValidationError("no embedding model (run `switchyard models pull`): \(error)")
        }
        let levels = thresholds.split(separator: ",").compactMap { Double($0.trimmingCharacters(in: .whitespaces)) }
        func embedAll(_ texts: [String]) -> [[Float]] {
            CachedEmbeddings.embed(texts, encoder: encoder, root: store.root, label: "eval-cache")
        }
        func lines(_ file: String) throws -> [JSONValue] {
            let text = try String(contentsOfFile: "\(data)/\(file)", encoding: .utf8)
            return try text.split(separator: "\n").map { try JSONValue.parse(Array($0.utf8)) }
        }

        let started = Date()
        let rawPairs = try lines("banking77_pairs_6k.jsonl")
        let firsts = embedAll(rawPairs.map { $0["q1"]?.stringValue ?? "" })
        let seconds = embedAll(rawPairs.map { $0["q2"]?.stringValue ?? "" })
        let pairs = rawPairs.indices.map { index in
            SemanticEvaluation.Pair(first: rawPairs[index]["q1"]?.stringValue ?? "", second: rawPairs[index]["q2"]?.stringValue ?? "",
                                    sameAnswer: rawPairs[index]["label"]?.intValue == 1,
                                    similarity: InMemorySemanticCache.dot(firsts[index], seconds[index]))
        }
        let rawStream = try lines("banking77_clinc_oos_stream_5k.jsonl")
        let streamVectors = embedAll(rawStream.map { $0["query"]?.stringValue ?? "" })
        let queries = rawStream.indices.map { index in
            SemanticEvaluation.StreamQuery(text: rawStream[index]["query"]?.stringValue ?? "",
                                           intent: rawStream[index]["intent"]?.stringValue ?? "",
                                           idealHit: rawStream[index]["ideal_hit"]?.boolValue ?? false, vector: streamVectors[index])
        }
        print("embedded \(pairs.count * 2 + queries.count) texts in \(String(format: "%.1f", Date().timeIntervalSince(started))) s")

        var report: [JSONValue] = []
        print("\nBanking77 pairs (\(pairs.filter { $0.sameAnswer }.count) same-intent, \(pairs.filter { !$0.sameAnswer }.count) different-intent)")
        print("| threshold | verified | served | precision | recall | false-hit rate |")
        print("|---|---|---|---|---|---|")
        for level in levels {
            for verified in [false, true] {
                let score = SemanticEvaluation.score(pairs, threshold: level, verified: verified)
                print(String(format: "| %.2f | %@ | %d | %.4f | %.4f | %.4f |", level, verified ? "yes" : "no", score.served,
                             score.precision, score.recall, score.falseHitRate))
                report.append(["set": "pairs", "threshold": .double(level), "verified": .bool(verified),
                               "served": .int(Int64(score.served)), "precision": .double(score.precision),
                               "recall": .double(score.recall), "false_hit_rate": .double(score.falseHitRate)])
            }
        }
        print("\nBanking77 + CLINC out-of-scope stream (\(queries.count) queries, \(queries.filter { $0.idealHit }.count) ideal hits)")
        print("| threshold | verified | hit rate | hit precision | recall | false hits per query |")
        print("|---|---|---|---|---|---|")
        for level in levels {
            for verified in [false, true] {
                let score = SemanticEvaluation.replay(queries, threshold: level, verified: verified)
                print(String(format: "| %.2f | %@ | %.4f | %.4f | %.4f | %.4f |", level, verified ? "yes" : "no", score.hitRate,
                             score.hitPrecision, score.recall, score.falseHitRate))
                report.append(["set": "stream", "threshold": .double(level), "verified": .bool(verified),
                               "hit_rate": .double(score.hitRate), "hit_precision": .double(score.hitPrecision),
                               "recall": .double(score.recall), "false_hits_per_query": .double(score.falseHitRate)])
            }
        }
        let learned: PairVerifier
        do {
            learned = try PairVerifier.load(path: verifier)
        } catch {
            throw ValidationError(error.description)
        }
        let words = EncoderWordVectors(encoder: encoder)
        let verifiedQueries = queries.map { query in
            var query = query
            query.pair = learned.prepared(PairVerifier.PairText(text: query.text, vector: query.vector))
            return query
        }
        print("\nThe stream through each policy (\(verifier): starting threshold \(learned.threshold), candidates from cosine \(learned.minimumSimilarity))")
        print("| policy | threshold | hit rate | hit precision | wrong answers per query | labels |")
        print("|---|---|---|---|---|---|")
        func row(_ name: String, _ policy: SemanticEvaluation.Policy) {
            let result = SemanticEvaluation.replay(verifiedQueries, policy: policy, words: words)
            let s = result.score
            // A calibrated replay's threshold moves: its value after each fifth of the stream.
            let fifths = stride(from: result.decisions.count / 5 - 1, to: result.decisions.count, by: max(result.decisions.count / 5, 1))
                .map { String(format: "%.3f", result.decisions[$0].threshold) }
            let threshold = policy.calibration == nil ? String(format: "%.4f", policy.threshold) : fifths.joined(separator: " → ")
            print(String(format: "| %@ | %@ | %.4f | %.4f | %.4f | %d |", name, threshold, s.hitRate, s.hitPrecision,
                         s.falseHitRate, result.labels))
            report.append(["set": "stream_policy", "policy": .string(name), "threshold": .double(policy.threshold),
                           "hit_rate": .double(s.hitRate), "hit_precision": .double(s.hitPrecision),
                           "false_hits_per_query": .double(s.falseHitRate), "labels": .int(Int64(result.labels))])
        }
        for level in [0.85, 0.90, 0.94] {
            row("plain threshold", .plain(level, guardChecks: false))
            row("rule verifier", .plain(level, guardChecks: true))
        }
        for level in [0.5, 0.8, 0.9, 0.91, 0.92, 0.93, 0.94, 0.95, 0.98, 0.99, 0.999, learned.threshold] {
            row("learned verifier", SemanticEvaluation.Policy(minimumSimilarity: learned.minimumSimilarity, guardChecks: true,
                                                             verifier: learned, threshold: level))
        }
        for level in [0.92, 0.94, learned.threshold] {
            var union = SemanticEvaluation.Policy(minimumSimilarity: learned.minimumSimilarity, guardChecks: true, verifier: learned,
                                                  threshold: level)
            union.rulesFloor = 0.94
            row("rules at 0.94, or learned", union)
            if let agreement {
                union.agreement = agreement
                row(String(format: "rules at 0.94, rules and learned ≥ %.2f from %.2f, or learned", agreement.probability, agreement.cosine), union)
            }
        }
        // How the verifier's probability relates to being right on this stream (every hit it would serve from 0.5):
        // what the modelled calibration assumes is a shift of its logit.
        let open = SemanticEvaluation.replay(verifiedQueries, policy: SemanticEvaluation.Policy(
            minimumSimilarity: learned.minimumSimilarity, guardChecks: true, verifier: learned, threshold: 0.5), words: words)
        print("\n| probability | hits | precision | mean probability |\n|---|---|---|---|")
        let edges = [0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0001]
        for (low, high) in zip(edges, edges.dropFirst()) {
            let hits = open.decisions.enumerated().filter { _, d in d.served != nil && d.score.map { $0 >= low && $0 < high } == true }
            guard !hits.isEmpty else { continue }
            let right = hits.filter { position, d in verifiedQueries[d.served!].intent == verifiedQueries[position].intent }.count
            let mean = hits.map { $0.1.score ?? 0 }.reduce(0, +) / Double(hits.count)
            print(String(format: "| %.3f–%.3f | %d | %.4f | %.4f |", low, min(high, 1), hits.count, Double(right) / Double(hits.count), mean))
        }
        print("")
        // At the serving confidence (a one-sided 95% bound), then at the point estimate (z = 0), which shows what the
        // labels alone would choose: 5,000 queries give too few labels to certify 99% at 95% confidence.
        for z in [1.645, 0] {
            for rate in shadowRates.split(separator: ",").compactMap({ Double($0.trimmingCharacters(in: .whitespaces)) }) {
                var settings = PairVerifier.calibrationSettings(base: learned.threshold, targetPrecision: targetPrecision)
                settings.z = z
                var policy = SemanticEvaluation.Policy(minimumSimilarity: learned.minimumSimilarity, guardChecks: true, verifier: learned,
                                                       threshold: learned.threshold,
                                                       calibration: SemanticEvaluation.Calibration(settings: settings, shadowRate: rate))
                row(String(format: "learned + calibration at %.0f%% shadow, z %.3g", rate * 100, z), policy)
                policy.rulesFloor = 0.94
                row(String(format: "rules at 0.94, or learned + calibration at %.0f%% shadow, z %.3g", rate * 100, z), policy)
                if let agreement {
                    policy.agreement = agreement
                    row(String(format: "rules at 0.94, rules and learned ≥ %.2f from %.2f, or learned + calibration at %.0f%% shadow, z %.3g",
                               agreement.probability, agreement.cosine, rate * 100, z), policy)
                }
            }
        }
        let adversarial = SemanticGuard.adversarialExamples
        let left = embedAll(adversarial.map(\.1)), right = embedAll(adversarial.map(\.2))
        let adversarialPairs = adversarial.indices.map { index in
            SemanticEvaluation.Pair(first: adversarial[index].1, second: adversarial[index].2, sameAnswer: false,
                                    similarity: InMemorySemanticCache.dot(left[index], right[index]))
        }
        print("\nAdversarial near-duplicates (\(adversarial.count) pairs that must not share an answer: \(SemanticGuard.Rejection.allCases.map(\.rawValue).joined(separator: ", ")))")
        print("| pair | similarity |")
        print("|---|---|")
        for pair in adversarialPairs.sorted(by: { $0.similarity > $1.similarity }) {
            print(String(format: "| %@ / %@ | %.4f |", pair.first, pair.second, pair.similarity))
        }
        print("| threshold | served without verification | served with verification |")
        print("|---|---|---|")
        for level in levels {
            let plain = SemanticEvaluation.score(adversarialPairs, threshold: level, verified: false)
            let checked = SemanticEvaluation.score(adversarialPairs, threshold: level, verified: true)
            print(String(format: "| %.2f | %d | %d |", level, plain.served, checked.served))
            report.append(["set": "adversarial", "threshold": .double(level), "served_unverified": .int(Int64(plain.served)),
                           "served_verified": .int(Int64(checked.served))])
        }
        // The larger adversarial set (eval/semantic_adversarial.jsonl: the project's own, written for this evaluation
        // and for nothing else), per kind of near miss, at the serving threshold.
        if let file = try? String(contentsOfFile: adversarialFile, encoding: .utf8) {
            let rows = try file.split(separator: "\n").map { try JSONValue.parse(Array($0.utf8)) }
            let firstTexts = rows.map { $0["a"]?.stringValue ?? "" }, secondTexts = rows.map { $0["b"]?.stringValue ?? "" }
            let a = embedAll(firstTexts), b = embedAll(secondTexts)
            var kinds: [String: (pairs: Int, close: Int, served: Int)] = [:]
            var servedPairs: [String] = []
            var unionServed = 0, agreementServed = 0
            var learnedKinds: [String: (candidates: Int, served: Int)] = [:]
            var learnedServedPairs: [String] = []
            for index in rows.indices {
                let kind = rows[index]["kind"]?.stringValue ?? "?"
                let similarity = InMemorySemanticCache.dot(a[index], b[index])
                let close = similarity >= servingThreshold
                let served = close && SemanticGuard.check(firstTexts[index], against: secondTexts[index]) == nil
                    && SemanticGuard.check(secondTexts[index], against: firstTexts[index]) == nil
                // The learned verifier's decision, at its starting threshold, in both directions.
                let pairA = PairVerifier.PairText(text: firstTexts[index], vector: a[index])
                let pairB = PairVerifier.PairText(text: secondTexts[index], vector: b[index])
                let candidate = Double(similarity) >= learned.minimumSimilarity
                let rulesPass = SemanticGuard.check(firstTexts[index], against: secondTexts[index]) == nil
                    && SemanticGuard.check(secondTexts[index], against: firstTexts[index]) == nil
                let probability = max(learned.probability(query: pairA, candidate: pairB, words: words),
                                      learned.probability(query: pairB, candidate: pairA, words: words))
                let learnedServed = candidate && rulesPass && probability >= learned.threshold
                if served || learnedServed { unionServed += 1 }
                if let agreement, served || learnedServed
                    || (rulesPass && Double(similarity) >= agreement.cosine && probability >= agreement.probability)
                {
                    agreementServed += 1
                    if !(served || learnedServed) {
                        print("served in the agreement band: \(kind): \(firstTexts[index]) / \(secondTexts[index]) (\(String(format: "%.4f, %.3f", similarity, probability)))")
                    }
                }
                if candidate { learnedKinds[kind, default: (0, 0)].candidates += 1 }
                if learnedServed {
                    learnedKinds[kind, default: (0, 0)].served += 1
                    learnedServedPairs.append("\(kind): \(firstTexts[index]) / \(secondTexts[index]) (\(String(format: "%.4f", similarity)))")
                }
                kinds[kind, default: (0, 0, 0)].pairs += 1
                if close { kinds[kind, default: (0, 0, 0)].close += 1 }
                if served {
                    kinds[kind, default: (0, 0, 0)].served += 1
                    servedPairs.append("\(kind): \(firstTexts[index]) / \(secondTexts[index]) (\(String(format: "%.4f", similarity)))")
                }
            }
            print("\nAdversarial set \(adversarialFile) (\(rows.count) near-miss pairs, \(kinds.count) kinds), at \(servingThreshold):")
            print("| kind | pairs | at or above the threshold | served with verification |")
            print("|---|---|---|---|")
            for kind in kinds.keys.sorted() {
                let row = kinds[kind] ?? (0, 0, 0)
                print("| \(kind) | \(row.pairs) | \(row.close) | \(row.served) |")
                report.append(["set": "adversarial_set", "kind": .string(kind), "pairs": .int(Int64(row.pairs)),
                               "close": .int(Int64(row.close)), "served_verified": .int(Int64(row.served))])
            }
            let total = kinds.values.reduce((0, 0, 0)) { ($0.0 + $1.pairs, $0.1 + $1.close, $0.2 + $1.served) }
            print("| all | \(total.0) | \(total.1) | \(total.2) (\(String(format: "%.1f", 100 * Double(total.1 - total.2) / Double(max(total.1, 1))))% of the close ones refused) |")
            for pair in servedPairs { print("served: \(pair)") }
            print("\nThe same set through the learned verifier (candidates from cosine \(learned.minimumSimilarity), served at "
                  + "probability \(learned.threshold)):")
            print("| kind | pairs | candidates | served |")
            print("|---|---|---|---|")
            for kind in kinds.keys.sorted() {
                let row = learnedKinds[kind] ?? (0, 0)
                print("| \(kind) | \(kinds[kind]?.pairs ?? 0) | \(row.candidates) | \(row.served) |")
                report.append(["set": "adversarial_set_learned", "kind": .string(kind), "candidates": .int(Int64(row.candidates)),
                               "served": .int(Int64(row.served))])
            }
            let learnedTotal = learnedKinds.values.reduce((0, 0)) { ($0.0 + $1.candidates, $0.1 + $1.served) }
            print("| all | \(rows.count) | \(learnedTotal.0) | \(learnedTotal.1) (\(String(format: "%.1f", 100 * Double(rows.count - learnedTotal.1) / Double(max(rows.count, 1))))% of all pairs refused) |")
            for pair in learnedServedPairs { print("served: \(pair)") }
            print("Rules at \(servingThreshold), or the learned verifier: \(unionServed) served "
                  + "(\(String(format: "%.1f", 100 * Double(rows.count - unionServed) / Double(max(rows.count, 1))))% of all pairs refused)")
            report.append(["set": "adversarial_set_rules_or_learned", "served": .int(Int64(unionServed))])
            if let agreement {
                print(String(format: "The same, with the agreement band (the rules and learned ≥ %.2f from cosine %.2f): %d served",
                             agreement.probability, agreement.cosine, agreementServed))
                report.append(["set": "adversarial_set_agreement", "served": .int(Int64(agreementServed))])
            }
        }
        // GPTCache paraphrases the verifier never trained on (the odd pairs): the share of those at cosine 0.90 or
        // more that are still served.
        let gptcache = try JSONValue.parse(Array(Data(contentsOf: URL(fileURLWithPath: "\(data)/gptcache_mock_data.json"))))
        let heldOut = (gptcache.arrayValue ?? []).enumerated().filter { $0.offset % 2 == 1 }.compactMap { item -> (String, String)? in
            guard let a = item.element["origin"]?.stringValue, let b = item.element["similar"]?.stringValue else { return nil }
            return (a, b)
        }
        if listTrainingRefusals {
            let training = (gptcache.arrayValue ?? []).enumerated().filter { $0.offset % 2 == 0 }.compactMap { item -> (String, String)? in
                guard let a = item.element["origin"]?.stringValue, let b = item.element["similar"]?.stringValue else { return nil }
                return (a, b)
            }
            let vectors = embedAll(training.flatMap { [$0.0, $0.1] })
            for (index, pair) in training.enumerated() where InMemorySemanticCache.dot(vectors[2 * index], vectors[2 * index + 1]) >= 0.90 {
                if let rejection = SemanticGuard.check(pair.0, against: pair.1) {
                    print("training refusal \(rejection.rawValue): \(pair.0) / \(pair.1)")
                } else {
                    let probability = learned.probability(query: .init(text: pair.0, vector: vectors[2 * index]),
                                                          candidate: .init(text: pair.1, vector: vectors[2 * index + 1]), words: words)
                    if probability < learned.threshold {
                        print(String(format: "training refusal learned %.3f (cosine %.3f): %@ / %@", probability,
                                     InMemorySemanticCache.dot(vectors[2 * index], vectors[2 * index + 1]), pair.0, pair.1))
                    }
                }
            }
        }
        let paraphraseVectors = embedAll(heldOut.flatMap { [$0.0, $0.1] })
        var close = 0, servedByRules = 0, servedByLearned = 0, servedByUnion = 0, servedByAgreement = 0
        var rejectedBy: [String: Int] = [:]
        for (index, pair) in heldOut.enumerated() {
            let va = paraphraseVectors[2 * index], vb = paraphraseVectors[2 * index + 1]
            guard InMemorySemanticCache.dot(va, vb) >= 0.90 else { continue }
            close += 1
            let rejection = SemanticGuard.check(pair.0, against: pair.1)
            let rules = rejection == nil
            if let rejection { rejectedBy[rejection.rawValue, default: 0] += 1 }
            if rules { servedByRules += 1 }
            let probability = learned.probability(query: PairVerifier.PairText(text: pair.0, vector: va),
                                                  candidate: PairVerifier.PairText(text: pair.1, vector: vb), words: words)
            let learnedServes = probability >= learned.threshold
            if rules, learnedServes { servedByLearned += 1 }
            let union = rules && (learnedServes || Double(InMemorySemanticCache.dot(va, vb)) >= Double(servingThreshold))
            if union { servedByUnion += 1 }
            if let agreement, union || (rules && Double(InMemorySemanticCache.dot(va, vb)) >= agreement.cosine
                                          && probability >= agreement.probability) { servedByAgreement += 1 }
        }
        print("\nGPTCache paraphrases held out from training: \(heldOut.count) pairs, \(close) at cosine ≥ 0.90; served: "
              + "rules \(servedByRules) (\(String(format: "%.1f", 100 * Double(servedByRules) / Double(max(close, 1))))%), "
              + "rules + learned verifier \(servedByLearned) (\(String(format: "%.1f", 100 * Double(servedByLearned) / Double(max(close, 1))))%), "
              + "rules at \(servingThreshold) or learned \(servedByUnion) (\(String(format: "%.1f", 100 * Double(servedByUnion) / Double(max(close, 1))))%)")
        if let agreement {
            print(String(format: "with the agreement band (the rules and learned ≥ %.2f from cosine %.2f): %d (%.1f%%)", agreement.probability,
                         agreement.cosine, servedByAgreement, 100 * Double(servedByAgreement) / Double(max(close, 1))))
            report.append(["set": "gptcache_held_out_agreement", "served": .int(Int64(servedByAgreement))])
        }
        print("refused by the rules, by reason: " + rejectedBy.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        report.append(["set": "gptcache_held_out", "pairs": .int(Int64(heldOut.count)), "close": .int(Int64(close)),
                       "served_rules": .int(Int64(servedByRules)), "served_learned": .int(Int64(servedByLearned)),
                       "served_rules_or_learned": .int(Int64(servedByUnion))])
        if let json {
            try Data(JSONValue.array(report).serialized()).write(to: URL(fileURLWithPath: json))
        }
    }
}

import Caching
import MockProvider
import Embeddings
import Foundation
import Logging
import Server
import SwitchyardCore
import SwitchyardModels
import SwitchyardTestKit
import Testing

/// The semantic cache: its verification, its store, and paraphrases through a gateway with the on-device model.
@Suite struct SemanticCacheTests {
    // MARK: Verification

    static let mustRefuse = SemanticGuard.adversarialExamples

    /// Rephrasings that must still be allowed to share an answer.
    static let mayShare: [(String, String)] = [
        ("How do I reset my password?", "How can I reset my password?"),
        ("Send money to my savings account", "Send money to savings"),
        ("How do I transfer money from checking to savings?", "How can I move money from checking into savings?"),
        ("Is there a fee for international transfers?", "Do you charge for international transfers?"),
        ("Convert miles to kilometers", "How do I convert miles into kilometers?"),
        ("Why was my card declined?", "Why did my card get declined?"),
        ("What is the capital of France?", "What's the capital of France?"),
        ("I can't log in", "I'm unable to log in"),
        ("Send 1,000 euros to my sister", "Send 1000 euros to my sister"),
        ("Can I get two cards?", "Can I get 2 cards?"),
        ("how do i reset my password", "How do I reset my password?"),
        ("My card hasn't arrived yet", "My card still hasn't come"),
        // A name capitalised only because it starts the sentence is the same name.
        ("Datasets can be loaded from cloud storage", "You can load Datasets from cloud storage"),
        // "No," answering, "not only", and "one" as an article.
        ("No, the old app doesn't work anymore", "The old app doesn't work anymore"),
        ("Can I use not only cards but also transfers?", "Can I use cards and also transfers?"),
        ("Can I order one card online?", "Can I order a card online?"),
        // Reworded: names and relation words move, and a long text's negation is carried by other words.
        ("A Dataset object is backed by a PyArrow Table.", "A PyArrow Table serves as the foundation for a Dataset object."),
        ("Yes, Datasets can be used with TensorFlow, PyTorch, and JAX.", "TensorFlow, PyTorch, and JAX are all compatible with Datasets."),
        ("Book a flight from Paris to London", "I need a plane ticket to London from Paris"),
        // A relation word used again only in one text; a vague quantity said two ways; "non-zero" written two ways.
        ("A library for resizing images for the web", "A library that offers image resizing for the web"),
        ("The archive holds several thousand records", "The archive holds thousands of records"),
        ("Set the timeout to a non-zero value", "Set the timeout to a nonzero value"),
        ("Serialized datasets can be saved to cloud storage using the save method.",
         "The save method can be used to store serialized datasets in cloud storage."),
        ("Specifying a version that is different from your local version of the library might cause compatibility issues.",
         "Using a version of the library that is not the same as your local version could lead to compatibility problems."),
    ]

    @Test func rolesAndOrderAreJudgedBetweenTextsInTheSameWords() {
        // The governed phrase, not only its first word: "square" is governed by "to" in both.
        #expect(SemanticGuard.check("Convert square feet to square meters", against: "Convert square meters to square feet") == .roles)
        // "in" relates units, and a plural is the same word.
        #expect(SemanticGuard.check("How many cups in a liter?", against: "How many liters in a cup?") == .roles)
        #expect(SemanticGuard.check("How many days in a week?", against: "How many weeks in a day?") == .roles)
        // "non" negates.
        #expect(SemanticGuard.check("Is the fee refundable?", against: "Is the fee non refundable?") == .negation)
        // A short text keeps its negation check even when reworded.
        #expect(SemanticGuard.check("Can I cancel my order?", against: "Is it impossible not to stop my purchase?") == .negation)
        // Two words changed around a swap is still the same words: refused.
        #expect(SemanticGuard.check("Is a debit card safer than a credit card?",
                                    against: "Is a credit card more secure than a debit card?") == .roles)
    }

    @Test func theRefinementsStillRefuseWhatDiffers() {
        #expect(SemanticGuard.check("Can I order one card?", against: "Can I order two cards?") == .numbers)
        #expect(SemanticGuard.check("No, it is free", against: "It is not free") == .negation)
        #expect(SemanticGuard.check("Datasets can be loaded from Azure", against: "Datasets can be loaded from Google") == .entities)
        #expect(SemanticGuard.check("Datasets beat Pandas", against: "Pandas beat Datasets") == .order)
        // Uses of a relation word are compared one by one when both texts use it as often.
        #expect(SemanticGuard.check("Is there a fee for cards and a discount for transfers?",
                                    against: "Is there a fee for transfers and a discount for cards?") == .roles)
        // Used more often in one text, an unmatched use still swaps with the other's.
        #expect(SemanticGuard.check("Convert miles to kilometers to compare them",
                                    against: "Convert kilometers to miles") == .roles)
        // A vague quantity is not a number, and "non-zero" is not zero.
        #expect(SemanticGuard.check("The archive holds thousands of records", against: "The archive holds 1000 records") == .numbers)
        #expect(SemanticGuard.check("Set the timeout to zero", against: "Set the timeout to non-zero") == .numbers)
    }

    @Test func verificationRefusesEachFailureKind() {
        for (kind, query, candidate) in Self.mustRefuse {
            #expect(SemanticGuard.check(query, against: candidate) == kind, "\(query) | \(candidate)")
            #expect(SemanticGuard.check(candidate, against: query) == kind, "\(candidate) | \(query)")
        }
        for kind in SemanticGuard.Rejection.allCases {
            #expect(Self.mustRefuse.contains { $0.0 == kind }, "no case for \(kind)")
        }
    }

    @Test func verificationLetsParaphrasesThrough() {
        for (query, candidate) in Self.mayShare {
            #expect(SemanticGuard.check(query, against: candidate) == nil, "\(query) | \(candidate)")
        }
    }

    @Test func theStoreSearchesOneNamespaceAndHonoursTTLAndBounds() {
        let later = ContinuousClock.now + .seconds(60)
        func unit(_ values: [Float]) -> [Float] {
            let norm = values.reduce(0) { $0 + $1 * $1 }.squareRoot()
            return values.map { $0 / norm }
        }
        func entry(_ id: String, _ namespace: String, _ vector: [Float], expires: ContinuousClock.Instant = later) -> SemanticEntry {
            SemanticEntry(id: id, namespace: namespace, text: id, vector: unit(vector),
                          answer: ExactCacheTests.answer(id, tenant: "t", expires: expires))
        }
        let store = InMemorySemanticCache(maxEntries: 3)
        store.insert(entry("a", "n1", [1, 0, 0]))
        store.insert(entry("b", "n1", [0.9, 0.1, 0]))
        store.insert(entry("c", "n2", [1, 0, 0]))
        let found = store.nearest(unit([1, 0.05, 0]), namespace: "n1", minimum: 0.5, limit: 5, now: .now)
        #expect(found.map(\.entry.id) == ["a", "b"] || found.map(\.entry.id) == ["b", "a"])
        #expect(found.count == 2 && found[0].similarity >= found[1].similarity)
        #expect(store.nearest(unit([0, 0, 1]), namespace: "n1", minimum: 0.5, limit: 5, now: .now).isEmpty)
        // Bounded: a fourth entry pushes out the oldest.
        store.insert(entry("d", "n1", [0, 1, 0]))
        #expect(store.count == 3 && store.remove(id: "a") == nil)
        // Expired entries are not found.
        store.insert(entry("old", "n3", [1, 0, 0], expires: .now - .seconds(1)))
        #expect(store.nearest(unit([1, 0, 0]), namespace: "n3", minimum: 0.5, limit: 5, now: .now).isEmpty)
        // That insert pushed out the next oldest (b); per-entry removal takes one out.
        #expect(store.remove(id: "b") == nil)
        #expect(store.remove(id: "d")?.id == "d" && store.count == 1)  // c is left; the expired one went when met

        // Bounded in bytes too: entries of about 1 KB in a store of 5 KB.
        let small = InMemorySemanticCache(maxEntries: 1000, maxBytes: 5_000)
        for index in 0..<20 {
            var big = entry("e\(index)", "n", [1, Float(index), 0])
            big.text = String(repeating: "x", count: 700)
            small.insert(big)
        }
        #expect(small.bytes <= 5_000 && small.count >= 3 && small.count < 20)
        #expect(small.remove(id: "e19") != nil && small.remove(id: "e0") == nil)
    }

    @Test func theEvaluationCountsHitsAndFalseHits() {
        let pairs = [
            SemanticEvaluation.Pair(first: "a b", second: "a c", sameAnswer: true, similarity: 0.97),
            SemanticEvaluation.Pair(first: "x", second: "y", sameAnswer: true, similarity: 0.80),
            SemanticEvaluation.Pair(first: "Can I pay?", second: "Can I not pay?", sameAnswer: false, similarity: 0.98),
            SemanticEvaluation.Pair(first: "p", second: "q", sameAnswer: false, similarity: 0.96),
        ]
        let plain = SemanticEvaluation.score(pairs, threshold: 0.95, verified: false)
        #expect(plain.served == 3 && plain.correct == 1 && plain.falseHits == 2)
        #expect(abs(plain.precision - 1.0 / 3) < 1e-9 && plain.recall == 0.5 && plain.falseHitRate == 1)
        let checked = SemanticEvaluation.score(pairs, threshold: 0.95, verified: true)
        #expect(checked.served == 2 && checked.falseHits == 1 && checked.falseHitRate == 0.5)

        // A stream: the second query of an intent hits the first; an unrelated one misses and is stored.
        let queries = [
            SemanticEvaluation.StreamQuery(text: "reset password", intent: "pw", idealHit: false, vector: [1, 0]),
            SemanticEvaluation.StreamQuery(text: "reset my password", intent: "pw", idealHit: true, vector: [0.99, 0.141]),
            SemanticEvaluation.StreamQuery(text: "card lost", intent: "card", idealHit: false, vector: [0, 1]),
            SemanticEvaluation.StreamQuery(text: "wrong answer", intent: "other", idealHit: false, vector: [0.98, 0.199]),
        ]
        let replay = SemanticEvaluation.replay(queries, threshold: 0.95, verified: false)
        #expect(replay.queries == 4 && replay.hits == 2 && replay.correctHits == 1 && replay.idealHits == 1)
        #expect(replay.hitPrecision == 0.5 && replay.recall == 1 && replay.falseHitRate == 0.25)
    }

    /// Clustered unit vectors (many questions about a few hundred topics), each with a noisy query of its own.
    static func clusteredVectors(count: Int, dimensions: Int = 64, seed: UInt64 = 7) -> (stored: [[Float]], queries: [[Float]]) {
        var rng = SplitMix64(seed: seed)
        func unit(_ values: [Float]) -> [Float] {
            let norm = values.reduce(0) { $0 + $1 * $1 }.squareRoot()
            return values.map { $0 / norm }
        }
        func gaussian() -> Float { Float(rng.nextGaussian()) }
        let centres = (0..<200).map { _ in unit((0..<dimensions).map { _ in gaussian() }) }
        var stored: [[Float]] = [], queries: [[Float]] = []
        for index in 0..<count {
            let centre = centres[index % centres.count]
            let point = unit(zip(centre, (0..<dimensions).map { _ in gaussian() * 0.15 }).map { $0 + $1 })
            stored.append(point)
            queries.append(unit(zip(point, (0..<dimensions).map { _ in gaussian() * 0.02 }).map { $0 + $1 }))
        }
        return (stored, queries)
    }

    @Test func theHNSWIndexFindsWhatAnExactScanFinds() {
        let (stored, queries) = Self.clusteredVectors(count: 1500, dimensions: 32)
        let store = InMemorySemanticCache(maxEntries: 10_000, annThreshold: 300)
        let later = ContinuousClock.now + .seconds(600)
        for (index, vector) in stored.enumerated() {
            store.insert(SemanticEntry(id: "e\(index)", namespace: "n", text: "q\(index)", vector: vector,
                                       answer: ExactCacheTests.answer("a\(index)", tenant: "t", expires: later)))
        }
        #expect(store.usesIndex("n"))
        var found = 0
        let sample = stride(from: 0, to: queries.count, by: 3).map { $0 }
        for index in sample {
            let best = store.nearest(queries[index], namespace: "n", minimum: 0.5, limit: 1, now: .now).first
            if best?.entry.id == "e\(index)" { found += 1 }
        }
        let recall = Double(found) / Double(sample.count)
        #expect(recall >= 0.95, "recall@1 \(recall)")
        // Removed entries are never returned, and the index keeps finding the rest.
        for index in 0..<700 { store.remove(id: "e\(index)") }
        #expect(store.count == 800)
        #expect(store.nearest(queries[10], namespace: "n", minimum: 0.5, limit: 3, now: .now).allSatisfy { $0.entry.id != "e10" })
        #expect(store.nearest(queries[1200], namespace: "n", minimum: 0.5, limit: 1, now: .now).first?.entry.id == "e1200")
    }

    // MARK: Through the gateway, with the on-device model

    static func body(_ question: String, model: String = "gpt-4o-mini") -> String {
        let content = String(decoding: JSONValue.string(question).serialized(), as: UTF8.self)
        return #"{"model":"\#(model)","max_tokens":30,"messages":[{"role":"system","content":"You are a bank's assistant."},{"role":"user","content":\#(content)}]}"#
    }

    func withModelGateway(environment: [String: String] = [:],
                          _ body: @Sendable @escaping (Gateway, String) async throws -> Void) async throws {
        try await withTestGateway(environment: environment, embeddings: .model(directory: ModelStore().modelDirectory)) { gateway, url in
            try await body(gateway, url)
        }
    }

    @Test func aParaphraseIsAnsweredFromTheSemanticCache() async throws {
        try await withModelGateway { _, url in
            let key = [("authorization", "Bearer tenant-a")]
            let first = try await send("\(url)/v1/chat/completions", body: Self.body("How do I reset my password?"), headers: key)
            #expect(first.header("x-switchyard-cache") == "miss")
            let second = try await send("\(url)/v1/chat/completions", body: Self.body("How can I reset my password?"), headers: key)
            #expect(second.header("x-switchyard-cache") == "hit-semantic")
            let similarity = try #require(second.header("x-switchyard-cache-similarity").flatMap(Double.init))
            #expect(similarity >= 0.95 && similarity < 1)
            #expect(second.header("x-switchyard-cache-entry")?.hasPrefix("sc_") == true)
            #expect(second.header("x-switchyard-cost-usd") == "0.000000000")
            #expect(ExactCacheTests.content(second.body) == ExactCacheTests.content(first.body))

            // Near in embedding space (0.98), opposite in meaning: verification refuses it.
            _ = try await send("\(url)/v1/chat/completions", body: Self.body("Can I cancel my order?"), headers: key)
            let refused = try await send("\(url)/v1/chat/completions", body: Self.body("Can I not cancel my order?"), headers: key)
            #expect(refused.header("x-switchyard-cache") == "miss")
            let metrics = try await send("\(url)/metrics", method: "GET", contentType: nil).body
            #expect(metrics.contains(#"switchyard_semantic_cache_rejections_total{reason="negation"} 1"#))
            // Another tenant never gets it, however close the question.
            let other = try await send("\(url)/v1/chat/completions", body: Self.body("How can I reset my password?"),
                                       headers: [("authorization", "Bearer tenant-b")])
            #expect(other.header("x-switchyard-cache") == "miss")
            // Another conversation context (system prompt) is another namespace.
            let otherSystem = Self.body("How can I reset my password?").replacingOccurrences(of: "a bank's", with: "an airline's")
            #expect(try await send("\(url)/v1/chat/completions", body: otherSystem, headers: key).header("x-switchyard-cache") == "miss")
        }
    }

    /// With the learned verifier: a rephrasing is served, a replaced word is not, and a false hit reported through
    /// feedback raises that tenant's threshold past the score it was served at (another tenant's stays).
    @Test func theLearnedVerifierServesRephrasingsRefusesReplacedWordsAndLearnsFromFeedback() async throws {
        var config = TestConfigs.embedded()
        config.cache.semanticLearnedVerifier = true
        try await withTestGateway(config, embeddings: .model(directory: ModelStore().modelDirectory)) { _, url in
            let key = [("authorization", "Bearer tenant-a")]
            _ = try await send("\(url)/v1/chat/completions", body: Self.body("How do I reset my password?"), headers: key)
            let hit = try await send("\(url)/v1/chat/completions", body: Self.body("How can I reset my password?"), headers: key)
            #expect(hit.header("x-switchyard-cache") == "hit-semantic")
            _ = try await send("\(url)/v1/chat/completions", body: Self.body("How do I activate my debit card?"), headers: key)
            let replaced = try await send("\(url)/v1/chat/completions", body: Self.body("How do I activate my credit card?"), headers: key)
            #expect(replaced.header("x-switchyard-cache") == "miss")
            let metrics = try await send("\(url)/metrics", method: "GET", contentType: nil).body
            #expect(metrics.contains(#"switchyard_semantic_cache_rejections_total{reason="learned"} 1"#))

            // The hit was wrong, says the client: the threshold rises past its score, so the same rephrasing in
            // another conversation (another namespace, the same tenant and model) is no longer served.
            let entry = try #require(hit.header("x-switchyard-cache-entry"))
            let feedback = try await send("\(url)/v1/cache/feedback", body: #"{"entry_id":"\#(entry)","verdict":"bad"}"#, headers: key)
            #expect(feedback.status == 200)
            let labelled = try await send("\(url)/metrics", method: "GET", contentType: nil).body
            #expect(labelled.contains(#"switchyard_semantic_cache_calibration_labels_total{source="feedback"} 1"#))
            func airline(_ question: String) -> String {
                Self.body(question).replacingOccurrences(of: "a bank's", with: "an airline's")
            }
            _ = try await send("\(url)/v1/chat/completions", body: airline("How do I reset my password?"), headers: key)
            let after = try await send("\(url)/v1/chat/completions", body: airline("How can I reset my password?"), headers: key)
            #expect(after.header("x-switchyard-cache") == "miss")
            // Tenant b's threshold is its own.
            let b = [("authorization", "Bearer tenant-b")]
            _ = try await send("\(url)/v1/chat/completions", body: airline("How do I reset my password?"), headers: b)
            let other = try await send("\(url)/v1/chat/completions", body: airline("How can I reset my password?"), headers: b)
            #expect(other.header("x-switchyard-cache") == "hit-semantic")
        }
    }

    /// `rules_or_learned`: what the rules serve at the threshold stays served though the verifier would refuse it
    /// (a general-domain rewording, far from its training), and a replaced word is still refused.
    @Test func rulesOrLearnedKeepsWhatTheRulesServe() async throws {
        for extends in [false, true] {
            var config = TestConfigs.embedded()
            config.cache.semanticLearnedVerifier = true
            config.cache.semanticLearnedExtendsRules = extends
            try await withTestGateway(config, embeddings: .model(directory: ModelStore().modelDirectory)) { _, url in
                _ = try await send("\(url)/v1/chat/completions", body: Self.body("Apache Beam is a library for parallel data processing."))
                let reworded = try await send("\(url)/v1/chat/completions",
                                              body: Self.body("Apache Beam provides a framework for parallel data processing."))
                #expect(reworded.header("x-switchyard-cache") == (extends ? "hit-semantic" : "miss"), "extends: \(extends)")
                _ = try await send("\(url)/v1/chat/completions", body: Self.body("How do I activate my debit card?"))
                let replaced = try await send("\(url)/v1/chat/completions", body: Self.body("How do I activate my credit card?"))
                #expect(replaced.header("x-switchyard-cache") == "miss", "extends: \(extends)")
            }
        }
    }

    /// `rules_or_learned`'s agreement band: a rewording at cosine 0.90–0.94 that the rules pass and the verifier
    /// leans to (below its threshold) is served; without the band it is not; after a false hit there is reported, the
    /// band closes for that tenant and model (the same rewording in another conversation is refused), not for another
    /// tenant.
    @Test func theAgreementBandServesWhatBothVerdictsLeanToAndClosesOnAFalseHit() async throws {
        let stored = "The `filter` method retrieves records from a table.", asked = "The `filter` method selects records from a table."
        for band in [false, true] {
            var config = TestConfigs.embedded()
            config.cache.semanticLearnedVerifier = true
            config.cache.semanticLearnedExtendsRules = true
            if !band { config.cache.semanticAgreementCosine = 1 }
            try await withTestGateway(config, embeddings: .model(directory: ModelStore().modelDirectory)) { _, url in
                let key = [("authorization", "Bearer tenant-a")]
                _ = try await send("\(url)/v1/chat/completions", body: Self.body(stored), headers: key)
                let hit = try await send("\(url)/v1/chat/completions", body: Self.body(asked), headers: key)
                #expect(hit.header("x-switchyard-cache") == (band ? "hit-semantic" : "miss"), "band: \(band)")
                let similarity = hit.header("x-switchyard-cache-similarity").flatMap(Double.init) ?? 0
                guard band else { return }
                #expect(similarity >= 0.90 && similarity < 0.94, "in the band, under the rules' own threshold: \(similarity)")
                let entry = try #require(hit.header("x-switchyard-cache-entry"))
                let feedback = try await send("\(url)/v1/cache/feedback", body: #"{"entry_id":"\#(entry)","verdict":"bad"}"#, headers: key)
                #expect(feedback.status == 200)
                func airline(_ question: String) -> String {
                    Self.body(question).replacingOccurrences(of: "a bank's", with: "an airline's")
                }
                _ = try await send("\(url)/v1/chat/completions", body: airline(stored), headers: key)
                let after = try await send("\(url)/v1/chat/completions", body: airline(asked), headers: key)
                #expect(after.header("x-switchyard-cache") == "miss")
                let b = [("authorization", "Bearer tenant-b")]
                _ = try await send("\(url)/v1/chat/completions", body: airline(stored), headers: b)
                let other = try await send("\(url)/v1/chat/completions", body: airline(asked), headers: b)
                #expect(other.header("x-switchyard-cache") == "hit-semantic")
            }
        }
    }

    /// A candidate the learned verifier refuses is labelled for free once the model has answered: its answer is
    /// compared with the refused one in the background, and the label reaches the calibration.
    @Test func aNearMissBecomesACalibrationLabel() async throws {
        var config = TestConfigs.embedded()
        config.cache.semanticLearnedVerifier = true
        config.cache.semanticShadowRate = 1
        try await withTestGateway(config, embeddings: .model(directory: ModelStore().modelDirectory)) { _, url in
            _ = try await send("\(url)/v1/chat/completions", body: Self.body("How do I activate my debit card?"))
            let refused = try await send("\(url)/v1/chat/completions", body: Self.body("How do I activate my credit card?"))
            #expect(refused.header("x-switchyard-cache") == "miss")
            var metrics = ""
            for _ in 0..<100 {
                metrics = try await send("\(url)/metrics", method: "GET", contentType: nil).body
                if metrics.contains(#"switchyard_semantic_cache_calibration_labels_total{source="near_miss"} 1"#) { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(metrics.contains(#"switchyard_semantic_cache_calibration_labels_total{source="near_miss"} 1"#))
        }
    }

    @Test func entityOrderSwapsAreRefusedThoughTheyScoreAbove0_99() async throws {
        try await withModelGateway { gateway, url in
            _ = try await send("\(url)/v1/chat/completions", body: Self.body("Book a flight from Paris to London"))
            let swapped = try await send("\(url)/v1/chat/completions", body: Self.body("Book a flight from London to Paris"))
            #expect(swapped.header("x-switchyard-cache") == "miss")
            let metrics = try await send("\(url)/metrics", method: "GET", contentType: nil).body
            #expect(metrics.contains(#"switchyard_semantic_cache_rejections_total{reason="order"} 1"#))
            #expect(gateway.semanticCache.count == 2)
        }
    }

    /// The semantic cache never makes a request wait behind a backlog of embeddings, and long texts go around it.
    @Test func aBusyEncoderOrALongQuestionSkipsTheSemanticCache() async throws {
        let batcher = EmbeddingBatcher(encoder: try MiniLMEncoder(directory: ModelStore().modelDirectory), maximumBatchTokens: 512)
        let long = Array(repeating: batcher.encoder.tokenizer.encode(String(repeating: "word ", count: 300)), count: 8)
        // Two callers of 8 × 256 tokens: while the first is computed, the second waits in the queue. A request made
        // meanwhile with a limit of 0 is shed. Asked until the backlog is gone: the first answer that is not shed
        // must come only once nothing waits (checking the queue and asking separately raced on a fast machine).
        let first = Task { await batcher.embed(long) }
        let backlog = Task { await batcher.embed(long) }
        var waited = 0
        while batcher.queuedTokens == 0, waited < 500 {
            try await Task.sleep(for: .milliseconds(2))
            waited += 1
        }
        var shedWhileQueued = false
        while batcher.queuedTokens > 0 {
            if await batcher.embed([batcher.encoder.tokenizer.encode("hello")], unlessQueuedTokensExceed: 0) == nil {
                shedWhileQueued = true
                break
            }
        }
        #expect(shedWhileQueued)
        let counts = (await first.value.count, await backlog.value.count)
        #expect(counts == (8, 8))
        #expect(await batcher.embed([batcher.encoder.tokenizer.encode("hello")], unlessQueuedTokensExceed: 0)?.count == 1)

        try await withModelGateway { _, url in
            let question = String(repeating: "Please read this long document carefully. ", count: 60)  // 2,580 bytes
            _ = try await send("\(url)/v1/chat/completions", body: Self.body(question))
            let metrics = try await send("\(url)/metrics", method: "GET", contentType: nil).body
            #expect(metrics.contains(#"switchyard_cache_requests_total{cache="semantic",result="bypass"} 1"#))
        }
    }

    @Test func shadowChecksAskTheModelInTheBackground() async throws {
        var config = TestConfigs.embedded()
        config.cache.semanticShadowRate = 1
        try await withTestGateway(config, embeddings: .model(directory: ModelStore().modelDirectory)) { gateway, url in
            _ = try await send("\(url)/v1/chat/completions", body: Self.body("How do I reset my password?"))
            let calls = gateway.mock?.currentStats.requests ?? 0
            let hit = try await send("\(url)/v1/chat/completions", body: Self.body("How can I reset my password?"))
            #expect(hit.header("x-switchyard-cache") == "hit-semantic")
            // The client had its cached answer at once; the model is asked afterwards and the answers compared.
            var checked = false
            for _ in 0..<100 where !checked {
                try await Task.sleep(for: .milliseconds(20))
                let metrics = try await send("\(url)/metrics", method: "GET", contentType: nil).body
                checked = metrics.contains("switchyard_semantic_cache_shadow_checks_total 1")
            }
            #expect(checked)
            #expect(gateway.mock?.currentStats.requests == calls + 1)
        }
    }

    @Test func badFeedbackRemovesTheEntryAndCountsAFalseHit() async throws {
        try await withModelGateway { _, url in
            let key = [("authorization", "Bearer tenant-a")]
            _ = try await send("\(url)/v1/chat/completions", body: Self.body("Why was my card declined?"), headers: key)
            let hit = try await send("\(url)/v1/chat/completions", body: Self.body("Why did my card get declined?"), headers: key)
            let entry = try #require(hit.header("x-switchyard-cache-entry"))
            let verdict = #"{"entry_id":"\#(entry)","verdict":"bad"}"#
            // Only the entry's own tenant can judge it.
            let foreign = try await send("\(url)/v1/cache/feedback", body: verdict, headers: [("authorization", "Bearer tenant-b")])
            #expect(foreign.status == 404)
            let judged = try await send("\(url)/v1/cache/feedback", body: verdict, headers: key)
            #expect(judged.status == 200 && judged.body.contains(#""removed":true"#))
            // The exact cache did not keep a copy of the semantic hit: the rephrasing now reaches the provider.
            let again = try await send("\(url)/v1/chat/completions", body: Self.body("Why did my card get declined?"), headers: key)
            #expect(again.header("x-switchyard-cache") == "miss")
            let metrics = try await send("\(url)/metrics", method: "GET", contentType: nil).body
            #expect(metrics.contains("switchyard_semantic_cache_false_hits_total 1"))
            let bad = try await send("\(url)/v1/cache/feedback", body: #"{"entry_id":"sc_x","verdict":"meh"}"#, headers: key)
            #expect(bad.status == 400 && bad.body.contains("verdict"))
        }
    }

    @Test func deletingTheCacheNeedsTheAdminKey() async throws {
        try await withModelGateway(environment: ["SWITCHYARD_ADMIN_KEY": "admin-secret"]) { gateway, url in
            for (key, question) in [("a", "What are your opening hours?"), ("b", "What are your opening hours?"), ("b", "Where is the branch?")] {
                _ = try await send("\(url)/v1/chat/completions", body: Self.body(question), headers: [("authorization", "Bearer \(key)")])
            }
            #expect(gateway.exactCache.count == 3 && gateway.semanticCache.count == 3)
            let refused = try await send("\(url)/v1/cache", method: "DELETE", headers: [("authorization", "Bearer a")], contentType: nil)
            #expect(refused.status == 401)
            let tenantB = "key-" + String(KeyHash.sha256Hex("b").prefix(12))
            let one = try await send("\(url)/v1/cache?tenant=\(tenantB)", method: "DELETE",
                                     headers: [("authorization", "Bearer admin-secret")], contentType: nil)
            #expect(one.status == 200 && one.body.contains(#""deleted":4"#))
            #expect(gateway.exactCache.count == 1 && gateway.semanticCache.count == 1)
            let all = try await send("\(url)/v1/cache", method: "DELETE", headers: [("authorization", "Bearer admin-secret")],
                                     contentType: nil)
            #expect(all.body.contains(#""deleted":2"#) && gateway.exactCache.count == 0)
        }
        // Without a configured admin key nobody may clear the cache.
        try await withTestGateway { _, url in
            let response = try await send("\(url)/v1/cache", method: "DELETE", headers: [("authorization", "Bearer x")], contentType: nil)
            #expect(response.status == 403)
        }
    }
}

/// Prompt text and API keys never reach logs, metric labels or response headers, on any cache path.
@Suite struct CachePrivacyTests {
    /// A value type, as LogHandlers must be: a logger copied and changed elsewhere must not change this one.
    struct Capture: LogHandler {
        let lines: Locked<[String]>
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        init(_ lines: Locked<[String]>) { self.lines = lines }

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let all = metadata.merging(event.metadata ?? [:]) { _, new in new }
            lines.withLock { $0.append("\(event.level) \(event.message) \(all) \(event.error.map { "\($0)" } ?? "")") }
        }
    }

    @Test func promptsAndKeysStayOutOfLogsMetricsAndHeaders() async throws {
        let lines = Locked<[String]>([])
        let logger = Logger(label: "privacy") { _ in Capture(lines) }
        var config = TestConfigs.embedded()
        config.mockLatencyScale = 0
        let gateway = try buildGateway(config: config, logger: logger, environment: ["SWITCHYARD_ADMIN_KEY": "admin-key-77"],
                                   embeddings: .model(directory: ModelStore().modelDirectory))
        let secret = "my account number is 99887766 and my mother's maiden name is Zyxwvut"
        let paraphrase = "my account number is 99887766, and my mother's maiden name is Zyxwvut"
        let key = "sk-privacy-key-31337"
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await gateway.run(handleSignals: false) }
            let url = "http://127.0.0.1:\(await gateway.listening.wait())"
            var headers: [String] = []
            for text in [secret, secret, paraphrase] {
                for stream in [false, true] {
                    let body = SemanticCacheTests.body(text).replacingOccurrences(of: #""max_tokens":30"#,
                                                                                  with: #""max_tokens":30,"stream":\#(stream)"#)
                    let response = try await send("\(url)/v1/chat/completions", body: body, headers: [("authorization", "Bearer \(key)")])
                    headers.append(contentsOf: response.headers.map { "\($0.0): \($0.1)" })
                }
            }
            _ = try await send("\(url)/v1/cache/feedback", body: #"{"entry_id":"sc_nope","verdict":"bad"}"#,
                               headers: [("authorization", "Bearer \(key)")])
            _ = try await send("\(url)/v1/cache", method: "DELETE", headers: [("authorization", "Bearer admin-key-77")], contentType: nil)
            let metrics = try await send("\(url)/metrics", method: "GET", contentType: nil).body
            #expect(headers.contains { $0.hasPrefix("x-switchyard-cache: hit") })
            let logged = lines.withLock { $0 }
            // Every request was logged (at info), with its model and status: the check below looks at real lines.
            #expect(logged.filter { $0.contains("switchyard.model") && $0.contains("gpt-4o-mini") }.count >= 6)
            for needle in ["99887766", "Zyxwvut", key, "admin-key-77"] {
                #expect(!logged.contains { $0.contains(needle) }, "\(needle) in the logs")
                #expect(!metrics.contains(needle), "\(needle) in the metrics")
                #expect(!headers.contains { $0.contains(needle) }, "\(needle) in the headers")
            }
            group.cancelAll()
        }
    }
}

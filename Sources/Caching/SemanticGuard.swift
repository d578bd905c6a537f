/// The check a semantic-cache candidate must pass before it is served.
///
/// Sentence embeddings place a question and its negation, or the same question with two numbers or two places
/// swapped, very close together (MiniLM scores many such pairs above 0.95). A cosine threshold alone therefore serves
/// answers to questions that were never asked. This guard compares what embeddings blur:
/// - **negation**: how many negation cues each text has (`not`, `never`, `can't`, `unable`, …);
/// - **numbers**: the numbers each mentions (digits and number words), as multisets;
/// - **entities**: names (capitalised words inside a sentence, acronyms, known places, currencies, months, days);
/// - **order**: the order in which the numbers and entities appear ("from Paris to London" is not "from London to
///   Paris");
/// - **roles**: which word each relation word governs, for ordinary words too: "from checking to savings" is not
///   "from savings to checking", "miles to kilometres" is not "kilometres to miles", "a cat bigger than a dog" is
///   not "a dog bigger than a cat". Only a swap refuses: the other text must use the word in another role.
/// It errs towards refusing: a refused paraphrase costs one upstream call, a wrong answer costs the user.
public enum SemanticGuard {
    public enum Rejection: String, Sendable, CaseIterable {
        case negation, numbers, entities, order, roles
    }

    /// Pairs MiniLM scores close together (many above 0.95) that must never share an answer, one set per failure kind:
    /// the guard's own test cases, and the adversarial set `switchyard eval semantic-cache` reports on.
    public static let adversarialExamples: [(Rejection, String, String)] = [
        (.negation, "Can I cancel my order?", "Can I not cancel my order?"),
        (.negation, "How do I cancel my card?", "How do I not cancel my card?"),
        (.negation, "I can log in to the app", "I can't log in to the app"),
        (.negation, "Is there a fee for transfers?", "Is there no fee for transfers?"),
        (.negation, "Should I freeze my card?", "Should I never freeze my card?"),
        (.numbers, "Transfer 100 dollars to my savings account", "Transfer 200 dollars to my savings account"),
        (.numbers, "What is 15% of 80?", "What is 15% of 90?"),
        (.numbers, "Can I order three cards?", "Can I order four cards?"),
        (.numbers, "My PIN was entered wrong 3 times", "My PIN was entered wrong 5 times"),
        (.entities, "What is the weather in Paris?", "What is the weather in Berlin?"),
        (.entities, "Do you accept Visa cards?", "Do you accept Mastercard cards?"),
        (.entities, "How do I pay in USD?", "How do I pay in EUR?"),
        (.entities, "what time is it in tokyo", "what time is it in seoul"),
        (.entities, "Can I top up on monday?", "Can I top up on friday?"),
        (.order, "Book a flight from Paris to London", "Book a flight from London to Paris"),
        (.order, "Convert 10 USD to EUR", "Convert 10 EUR to USD"),
        (.order, "Did Alice pay Bob back?", "Did Bob pay Alice back?"),
        (.order, "Is 7 bigger than 9?", "Is 9 bigger than 7?"),
        (.roles, "move money from checking to savings", "move money from savings to checking"),
        (.roles, "How do I convert miles to kilometers?", "How do I convert kilometers to miles?"),
        (.roles, "Is a debit card safer than a credit card?", "Is a credit card safer than a debit card?"),
        (.roles, "Can I switch from the business plan to the personal plan?", "Can I switch from the personal plan to the business plan?"),
        (.roles, "Transfer my balance into savings from checking", "Transfer my balance into checking from savings"),
        ]

    /// Why `candidate` must not answer `query`, or `nil` when it may.
    public static func check(_ query: String, against candidate: String) -> Rejection? {
        let a = Features(query), b = Features(candidate)
        // Order and roles are evidence only between texts that say the same thing in the same words: "Did Alice pay
        // Bob?" against "Did Bob pay Alice?". A reworded paraphrase moves names and relation words around anyway ("a
        // Dataset is backed by a PyArrow Table" / "a PyArrow Table is the foundation of a Dataset"), and so does a
        // long one whose negation is carried by other words ("not mandatory" / "optional").
        let reworded = Self.reworded(a, b)
        if a.negations != b.negations, !(reworded && min(a.content.count, b.content.count) >= Self.longText) {
            return .negation
        }
        if a.numbers.sorted() != b.numbers.sorted() { return .numbers }
        // A name is a name in both texts when either writes it as one: at the start of a sentence it is capitalised
        // anyway ("Datasets can be loaded…" against "…loaded with Datasets").
        let named = Set(a.entities).union(b.entities)
        if named.intersection(a.words) != named.intersection(b.words) { return .entities }
        if reworded { return nil }
        if a.sequence(named: named) != b.sequence(named: named) { return .order }
        if Self.rolesSwapped(a, b) { return .roles }
        return nil
    }

    /// Content words (from `longText` on) a text needs before a negation word may be part of rewording.
    static let longText = 8

    /// Whether more than a small share of the two texts' content words (stemmed) is in only one of them: at most
    /// two words, or 30% of their union, may differ for the texts to count as the same words.
    static func reworded(_ a: Features, _ b: Features) -> Bool {
        let differing = a.content.symmetricDifference(b.content).count
        let union = a.content.union(b.content).count
        return differing > max(2, union * 3 / 10)
    }

    /// Whether a relation word governs different words in each text while each text also uses the words the other
    /// puts there: the words swapped roles. The governed phrase is up to three content words after the relation word
    /// ("to square meters" against "to square feet"). "to savings" against "to my savings account" agree; "to
    /// savings" against "to checking" in a text without "savings" is a substitution, which the others judge.
    /// A relation word used as often in both texts is compared use by use ("a fee for cards and a discount for
    /// transfers" is not "a fee for transfers and a discount for cards"). Used more often in one, only the uses
    /// without a counterpart are compared: "a library for performing augmentation for vision" and "a library that
    /// provides augmentation for vision" agree on "for vision", and the first "for" has nothing to swap with.
    static func rolesSwapped(_ a: Features, _ b: Features) -> Bool {
        func swapped(_ mine: Set<String>, _ theirs: Set<String>) -> Bool {
            guard mine != theirs else { return false }
            return mine.subtracting(theirs).contains(where: b.stems.contains)
                && theirs.subtracting(mine).contains(where: a.stems.contains)
        }
        for (relation, uses) in a.roles {
            guard let others = b.roles[relation] else { continue }
            if uses.count == others.count {
                if zip(uses, others).contains(where: swapped) { return true }
                continue
            }
            let unmatched = uses.filter { !others.contains($0) }, unmatchedOthers = others.filter { !uses.contains($0) }
            for use in unmatched where unmatchedOthers.contains(where: { swapped(use, $0) }) { return true }
        }
        return false
    }

    /// Uses of one relation word a text's roles keep: the comparison of unmatched uses is quadratic in them.
    static let maxUses = 8

    /// A word without a plural `s`, so "liters" and "a liter" compare equal.
    static func stem(_ word: String) -> String {
        guard word.count > 3, word.hasSuffix("s"), !word.hasSuffix("ss") else { return word }
        return String(word.dropLast())
    }

    /// Relation words whose object's role a swap changes.
    static let relationWords: Set<String> = ["from", "to", "into", "than", "for", "over", "versus", "vs", "instead", "onto",
                                             "in", "per"]
    /// Words skipped between a relation word and the word it governs.
    static let fillerWords: Set<String> = ["the", "a", "an", "my", "your", "our", "their", "his", "her", "its", "this",
                                           "that", "of", "some", "any", "one"]
    /// Words that carry no content of their own: a governed phrase ends at one, and rewording is judged without them.
    static let functionWords: Set<String> = fillerWords.union(relationWords).union([
        "and", "or", "but", "is", "are", "was", "were", "be", "been", "being", "am", "do", "does", "did", "can",
        "could", "will", "would", "should", "shall", "may", "might", "must", "have", "has", "had", "i", "you", "we",
        "they", "he", "she", "it", "me", "us", "them", "on", "at", "by", "with", "as", "if", "when", "how", "what",
        "which", "who", "why", "where", "there", "these", "those", "so", "such", "also", "then", "about", "more",
        "most", "very", "all", "each", "both", "it's", "i'm", "there's",
    ])

    struct Features {
        var negations = 0
        var numbers: [String] = []
        var entities: [String] = []
        /// Each relation word and the content words it governs, stemmed, one set per use (the first `maxUses`).
        var roles: [String: [Set<String>]] = [:]
        /// Every word, lowercased.
        var words: Set<String> = []
        /// Every word, lowercased and stemmed.
        var stems: Set<String> = []
        /// The words that are not function words, lowercased and stemmed.
        var content: Set<String> = []
        /// Every word, lowercased, in order; a number as its normalised value after a `#`.
        var ordered: [String] = []

        /// Numbers and the words either text writes as a name, in order of appearance.
        func sequence(named: Set<String>) -> [String] {
            ordered.filter { $0.hasPrefix("#") || named.contains($0) }
        }

        init(_ text: String) {
            var sentenceStart = true
            var pendingRelation: String?
            var previous = ""
            var phrase: [String] = []
            func finishPhrase() {
                if let relation = pendingRelation, !phrase.isEmpty, roles[relation, default: []].count < SemanticGuard.maxUses {
                    roles[relation, default: []].append(Set(phrase))
                }
                pendingRelation = nil
                phrase = []
            }
            for token in SemanticGuard.tokens(text) {
                if !token.text.isEmpty {
                    let word = token.text.lowercased()
                    let stem = SemanticGuard.stem(word)
                    words.insert(word)
                    stems.insert(stem)
                    ordered.append(word)
                    let function = SemanticGuard.functionWords.contains(word)
                    if !function { content.insert(stem) }
                    if pendingRelation != nil {
                        if phrase.isEmpty && SemanticGuard.fillerWords.contains(word) {
                            // "to the savings account": the article is skipped.
                        } else if !function && phrase.count < 3 {
                            phrase.append(stem)
                            if token.endsSentence || token.followedByComma { finishPhrase() }
                        } else {
                            finishPhrase()
                        }
                    }
                    if SemanticGuard.relationWords.contains(word) {
                        finishPhrase()
                        pendingRelation = word
                    }
                }
                if token.text.isEmpty {
                    sentenceStart = sentenceStart || token.endsSentence
                    continue
                }
                let lower = token.text.lowercased()
                // "No, …" answering a question and "not only … but also" negate nothing the other text could lack.
                let interjection = lower == "no" && token.followedByComma
                let notOnly = lower == "not" && token.nextWord == "only"
                if SemanticGuard.isNegation(lower), !interjection, !notOnly { negations += 1 }
                if let number = SemanticGuard.number(lower) {
                    // "several thousand" and "thousands" are the same vague quantity, not the number 1000.
                    let vague = SemanticGuard.scaleWords.contains(lower) && SemanticGuard.vagueQuantifiers.contains(previous)
                    let value = vague ? number + "s" : number
                    numbers.append(value)
                    ordered[ordered.count - 1] = "#" + value
                } else if SemanticGuard.isEntity(token.text, lower: lower, sentenceStart: sentenceStart) {
                    entities.append(lower)
                }
                sentenceStart = token.endsSentence
                previous = lower
            }
            finishPhrase()
        }
    }

    struct Token {
        var text: String
        var endsSentence: Bool
        var followedByComma = false
        /// The next token's text, lowercased.
        var nextWord = ""
    }

    /// Words (letters, digits, apostrophes, and `.`/`,` inside numbers), each noting whether a sentence ends after it.
    static func tokens(_ text: String) -> [Token] {
        var tokens: [Token] = []
        var current = ""
        let characters = Array(text)
        for (index, character) in characters.enumerated() {
            let next = index + 1 < characters.count ? characters[index + 1] : " "
            let previous = current.last
            // "non-zero" is "nonzero", a word of its own: neither a negation nor the number zero.
            if character == "-", current.lowercased() == "non", index + 4 < characters.count,
               String(characters[(index + 1)...(index + 4)]).lowercased() == "zero"
            {
                continue
            }
            if character.isLetter || character.isNumber || character == "'" || character == "’"
                || ((character == "." || character == ",") && previous?.isNumber == true && next.isNumber)
            {
                current.append(character == "’" ? "'" : character)
                continue
            }
            if !current.isEmpty {
                tokens.append(Token(text: current, endsSentence: false, followedByComma: character == ","))
                current = ""
            }
            if character == "." || character == "?" || character == "!" || character == "\n" {
                if let last = tokens.indices.last { tokens[last].endsSentence = true }
            }
        }
        if !current.isEmpty { tokens.append(Token(text: current, endsSentence: true)) }
        for index in tokens.indices.dropLast() { tokens[index].nextWord = tokens[index + 1].text.lowercased() }
        // An empty first token marks the text's start as a sentence start.
        return [Token(text: "", endsSentence: true)] + tokens
    }

    static let negationWords: Set<String> = [
        "not", "non", "no", "never", "none", "nobody", "nothing", "neither", "nor", "nowhere", "without", "cannot", "unable",
        "cant", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "wont", "wouldnt", "shouldnt", "couldnt",
        "havent", "hasnt", "hadnt", "mustnt", "neednt", "aint",
    ]

    static func isNegation(_ lower: String) -> Bool {
        negationWords.contains(lower) || lower.hasSuffix("n't")
    }

    static let numberWords: [String: String] = [
        "zero": "0", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8",
        "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14", "fifteen": "15",
        "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19", "twenty": "20", "thirty": "30",
        "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80", "ninety": "90", "hundred": "100",
        "thousand": "1000", "million": "1000000", "billion": "1000000000", "first": "1st", "second": "2nd",
        "third": "3rd", "fourth": "4th", "fifth": "5th", "half": "1/2", "twice": "x2", "double": "x2", "triple": "x3", "dozen": "12",
        "dozens": "12s", "hundreds": "100s", "thousands": "1000s", "millions": "1000000s", "billions": "1000000000s",
    ]
    static let scaleWords: Set<String> = ["dozen", "hundred", "thousand", "million", "billion"]
    /// Words that make a scale word a vague quantity ("several thousand", "a few hundred").
    static let vagueQuantifiers: Set<String> = ["several", "many", "few", "some", "multiple", "numerous"]

    /// The token as a normalised number (digits without thousands separators, or a number word's value). "one" is
    /// not one: it is as often a pronoun or an article ("one can", "in one go", "a single one") as a count, and a
    /// count of one against another count still differs by the other's number.
    static func number(_ lower: String) -> String? {
        if let word = numberWords[lower] { return word }
        guard lower.contains(where: \.isNumber) else { return nil }
        // 1,000 and 1000 are the same number; 3rd and 3 are not the same token but both mention three.
        return lower.filter { $0 != "," }
    }

    static let knownEntities: Set<String> = [
        // currencies
        "usd", "eur", "gbp", "jpy", "chf", "cad", "aud", "cny", "inr", "dollar", "dollars", "euro", "euros", "pound", "pounds",
        "yen", "franc", "francs", "rupee", "rupees", "yuan", "peso", "pesos", "bitcoin", "btc",
        // months and days
        "january", "february", "march", "april", "june", "july", "august", "september", "october", "november",
        "december", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "today", "tomorrow",
        "yesterday",
        // places
        "paris", "london", "berlin", "madrid", "rome", "lisbon", "dublin", "amsterdam", "brussels", "vienna", "prague",
        "warsaw", "stockholm", "oslo", "copenhagen", "helsinki", "athens", "zurich", "geneva", "munich", "milan",
        "barcelona", "moscow", "istanbul", "cairo", "dubai", "delhi", "mumbai", "bangalore", "beijing", "shanghai",
        "tokyo", "osaka", "seoul", "singapore", "bangkok", "sydney", "melbourne", "auckland", "toronto", "vancouver",
        "montreal", "chicago", "boston", "seattle", "denver", "austin", "dallas", "houston", "miami", "atlanta",
        "york", "angeles", "francisco", "washington", "mexico", "lima", "bogota", "santiago", "buenos", "aires",
        "johannesburg", "lagos", "nairobi", "france", "germany", "spain", "italy", "portugal", "ireland", "england",
        "scotland", "wales", "britain", "uk", "usa", "america", "canada", "australia", "japan", "china", "india",
        "brazil", "russia", "netherlands", "belgium", "austria", "switzerland", "sweden", "norway", "denmark",
        "finland", "poland", "greece", "turkey", "egypt", "israel", "korea", "vietnam", "thailand", "indonesia",
        "argentina", "chile", "colombia", "peru", "nigeria", "kenya", "europe", "asia", "africa",
    ]

    /// A name: a known place, currency, month or day; an acronym; or a capitalised word inside a sentence.
    static func isEntity(_ token: String, lower: String, sentenceStart: Bool) -> Bool {
        if knownEntities.contains(lower) { return true }
        guard let first = token.first, first.isUppercase, lower != "i", !lower.hasPrefix("i'") else { return false }
        let letters = token.filter(\.isLetter)
        if letters.count >= 2, letters.allSatisfy(\.isUppercase) { return true }  // acronym
        return !sentenceStart
    }
}

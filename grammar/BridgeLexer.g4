// BridgeLexer.g4 - tokens of the .bridge language.
// Keywords are soft: the parser accepts them wherever a name is expected, so a
// tensor name segment that happens to spell a keyword still parses.
lexer grammar BridgeLexer;

IMPORT    : 'import';
BRIDGE    : 'bridge';
FRAGMENT  : 'fragment';
SCHEMA    : 'schema';
MATCH     : 'match';
ALIAS     : 'alias';
LET       : 'let';
REQUIRE   : 'require';
CONFIG    : 'config';
EXPORT    : 'export';
WEIGHTS   : 'weights';
FOR       : 'for';
IN        : 'in';
WHERE     : 'where';
WHEN      : 'when';
OPTIONAL  : 'optional';
OVERRIDE  : 'override';
IGNORE    : 'ignore';
TIE       : 'tie';
FIELD     : 'field';
PARAM     : 'param';
BLOCK     : 'block';
USE       : 'use';
AT_KW     : 'at';
FROM      : 'from';
QUANTIZED : 'quantized';
RANGE     : 'range';
TE        : 'te';
EXPERT    : 'expert';
DIST      : 'dist';
LOCALDIST : 'localdist';
RECIPE    : 'recipe';
PRESET    : 'preset';
HF        : 'hf';
KW_TRUE   : 'true';
KW_FALSE  : 'false';
KW_NULL   : 'null';

LARROW    : '<-';
COALESCE  : '??';
DOTDOT    : '..';
EQ        : '==';
NE        : '!=';
LE        : '<=';
GE        : '>=';
ANDAND    : '&&';
OROR      : '||';
SLASHSLASH: '//';
LT        : '<';
GT        : '>';
ASSIGN    : '=';
PLUS      : '+';
MINUS     : '-';
STAR      : '*';
SLASH     : '/';
PERCENT   : '%';
BANG      : '!';
PIPE      : '|';
QUESTION  : '?';
COLON     : ':';
SEMI      : ';';
COMMA     : ',';
DOT       : '.';
AT        : '@';
LPAREN    : '(';
RPAREN    : ')';
LBRACE    : '{';
RBRACE    : '}';
LBRACK    : '[';
RBRACK    : ']';

FLOAT     : DIGIT+ '.' DIGIT+ EXPONENT? | DIGIT+ EXPONENT;
INT       : DIGIT+;
IDENT     : [a-zA-Z_] [a-zA-Z_0-9]*;
STRING    : '"' (~["\\\r\n] | '\\' ["\\nt])* '"';

LINE_COMMENT : '#' ~[\r\n]* -> channel(HIDDEN);
WS        : [ \t\r\n]+ -> channel(HIDDEN);
// Anything else is one bad character; the parser reports it with its position.
ERROR_CHAR: . ;

fragment DIGIT    : [0-9];
fragment EXPONENT : [eE] [+-]? DIGIT+;

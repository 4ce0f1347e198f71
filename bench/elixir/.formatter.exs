[inputs: ["mix.exs", "bench.exs", "{config,lib}/**/*.{ex,exs}"], line_length: 100]

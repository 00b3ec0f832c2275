{
  description = "comfix: a Nix-style content-addressed store and builder for ComfyUI environments";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    flake-utils.url = "github:numtide/flake-utils";
  };

  outputs = { self, nixpkgs, flake-utils }:
    flake-utils.lib.eachDefaultSystem (system:
      let
        pkgs = nixpkgs.legacyPackages.${system};
        comfix = pkgs.rustPlatform.buildRustPackage {
          pname = "comfix";
          version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).package.version;
          src = pkgs.lib.cleanSource ./.;
          cargoLock.lockFile = ./Cargo.lock;
          # The test suite runs the binary against temporary stores; it needs no network.
          doCheck = true;
          meta = {
            description = "Content-addressed store and builder for ComfyUI environments";
            mainProgram = "comfix";
            license = with pkgs.lib.licenses; [ mit asl20 ];
          };
        };
      in {
        packages.default = comfix;
        checks.default = comfix;
        apps.default = flake-utils.lib.mkApp { drv = comfix; };
        devShells.default = pkgs.mkShell {
          inputsFrom = [ comfix ];
          packages = [ pkgs.rustfmt pkgs.clippy pkgs.b3sum ];
        };
      });
}

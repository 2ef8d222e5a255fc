// SPDX-License-Identifier: Apache-2.0
pragma solidity =0.8.28;

/// @title AnchorRegistry: an append-only registry of cityanchor batch-log roots
/// @author cityanchor
/// @notice Each call to `anchor` records that a signed checkpoint of the cityanchor batch log
///         (an RFC 9162 Merkle tree of batch roots) existed no later than the current block.
///         A root, once anchored, can never be rewritten, moved or deleted: there is no owner,
///         no admin function, no upgrade path and no selfdestruct. Anyone holding a receipt
///         checks `anchoredAt(log.root)` against any JSON-RPC endpoint of the chain.
/// @dev The optional allow-list of submitters is fixed in the constructor and immutable
///      afterwards. Gas per anchor does not depend on how many readings a root commits to:
///      one fresh storage slot and one event, whatever the volume.
///      Compiled with evmVersion "paris" (no PUSH0, no MCOPY, no transient storage) so that
///      EVM chains that stopped at or before the Merge fork (many permissioned networks)
///      accept the bytecode; see scripts/compile-contract.js.
contract AnchorRegistry {
    /// @notice A batch-log root was anchored.
    /// @param root The 32-byte RFC 9162 root of the batch log (the checkpoint's root hash).
    /// @param treeSize The log size the root commits to (the checkpoint's tree size).
    /// @param submitter The account that sent the anchoring transaction.
    event Anchored(bytes32 indexed root, uint64 treeSize, address indexed submitter);

    /// @notice `root` was already anchored, in block `blockNumber`; the record is unchanged.
    error AlreadyAnchored(bytes32 root, uint256 blockNumber);

    /// @notice The allow-list is in force and `account` is not on it.
    error NotSubmitter(address account);

    /// @notice The root is 32 zero bytes, which `anchoredAt` uses to mean "never anchored".
    error ZeroRoot();

    /// @notice The tree size is 0: an empty log has nothing worth anchoring.
    error ZeroTreeSize();

    /// @notice The constructor's allow-list holds the zero address.
    error InvalidSubmitter(address account);

    /// @dev root => number of the block that anchored it; 0 means never (no transaction can be
    ///      included in the genesis block 0, so 0 is never a real anchoring block).
    mapping(bytes32 => uint256) private _anchoredAt;

    /// @dev The allow-list; written only by the constructor.
    mapping(address => bool) private _submitters;

    /// @notice True when only the accounts given at deployment may anchor; false when anyone may.
    bool public immutable submittersRestricted;

    /// @param submitters The accounts allowed to anchor, fixed forever; empty lets anyone anchor.
    constructor(address[] memory submitters) {
        for (uint256 i = 0; i < submitters.length; ++i) {
            if (submitters[i] == address(0)) revert InvalidSubmitter(submitters[i]);
            _submitters[submitters[i]] = true;
        }
        submittersRestricted = submitters.length > 0;
    }

    /// @notice Anchor `root`, the root of a batch log of `treeSize` entries, in this block.
    /// @dev Append-only: reverts with `AlreadyAnchored` if `root` was anchored before, so an
    ///      anchored root keeps its first block number forever.
    /// @param root The batch-log root; must not be zero.
    /// @param treeSize The batch-log size the root commits to; must not be zero.
    function anchor(bytes32 root, uint64 treeSize) external {
        if (submittersRestricted && !_submitters[msg.sender]) revert NotSubmitter(msg.sender);
        if (root == bytes32(0)) revert ZeroRoot();
        if (treeSize == 0) revert ZeroTreeSize();
        uint256 previous = _anchoredAt[root];
        if (previous != 0) revert AlreadyAnchored(root, previous);
        _anchoredAt[root] = block.number;
        emit Anchored(root, treeSize, msg.sender);
    }

    /// @notice The number of the block in which `root` was anchored, or 0 if it never was.
    /// @param root The batch-log root to look up.
    /// @return blockNumber The anchoring block's number, 0 if never anchored.
    function anchoredAt(bytes32 root) external view returns (uint256 blockNumber) {
        return _anchoredAt[root];
    }

    /// @notice Whether `account` may call `anchor`: always true when no allow-list is in force.
    /// @param account The account to check.
    /// @return allowed True if `account` may anchor.
    function isSubmitter(address account) external view returns (bool allowed) {
        return !submittersRestricted || _submitters[account];
    }
}
